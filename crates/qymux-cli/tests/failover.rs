//! `connect = "first"` (the default): an agent whose first server does not answer moves
//! on to the next one.

mod common;

use common::*;

#[test]
fn connect_first_moves_to_the_next_server_when_the_first_is_down() {
    let dir = cert_dir("cli-first");
    let server_cfg = write(
        &dir,
        "server.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
cert = "certs/server.pem"
key = "certs/server.key"

[services.web]
public = "127.0.0.1:0"
token = "{TOKEN}"
"#
        ),
    );
    let (_server, addr, publics) = start_server(&server_cfg, &["web"]);
    // An address where nothing listens (TCP refuses at once; QUIC gets no answer).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let echo = echo_service();
    let cfg = write(
        &dir,
        "agent.toml",
        &format!(
            r#"
servers = ["{dead}", "{addr}"]
server_name = "localhost"
ca = "certs/ca.pem"

[session]
connect_timeout = "2s"
handshake_timeout = "2s"

[services.web]
local = "{echo}"
token = "{TOKEN}"
"#
        ),
    );
    let mut agent = Proc::agent("agent", &cfg);
    let granted = agent.wait_msg("claim granted", &[("service", "web")]);
    assert_eq!(
        granted["span"]["server"].as_str(),
        Some(addr.as_str()),
        "{granted}"
    );
    let mut c = EchoClient::connect(&publics[0]);
    assert_eq!(c.roundtrip("via the second").unwrap(), "via the second");
}

/// One service without config files: flags, the token from a file on the server and
/// from `QYMUX_TOKEN` on the agent (never on the command line).
#[test]
fn one_service_from_flags_without_files() {
    let dir = cert_dir("cli-flags");
    let certs = dir.join("certs");
    let token_file = write(&dir, "web.token", &format!("{TOKEN}\n"));
    let server = Proc::start(
        "server",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &certs.join("server.pem").to_string_lossy(),
            "--key",
            &certs.join("server.key").to_string_lossy(),
            "--service",
            "web=127.0.0.1:0",
            "--token-file",
            &token_file.to_string_lossy(),
        ],
    );
    let (_server, addr, publics) = wait_server(server, &["web"]);
    let echo = echo_service();
    let mut agent = Proc::start_with_env(
        "agent",
        &[
            "agent",
            "--server",
            &addr,
            "--server-name",
            "localhost",
            "--ca",
            &certs.join("ca.pem").to_string_lossy(),
            "--service",
            &format!("web={echo}"),
        ],
        &[("QYMUX_TOKEN", TOKEN)],
    );
    agent.wait_msg("claim granted", &[("service", "web")]);
    let mut c = EchoClient::connect(&publics[0]);
    assert_eq!(c.roundtrip("flags").unwrap(), "flags");

    // A service flag that is not NAME=ADDRESS is a clear error.
    let out = run(&["agent", "--server", &addr, "--service", "web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NAME=ADDRESS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
