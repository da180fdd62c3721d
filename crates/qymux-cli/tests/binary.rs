//! The `qymux` binary as a user runs it: `qymux cert`, TOML files in a temporary
//! directory, `qymux server` and `qymux agent` processes, and clients nobody on the
//! project wrote (curl, grpcio) through the public ports.

mod common;

use common::*;

fn server_toml(client_ca: bool, services: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
cert = "certs/server.pem"
key = "certs/server.key"
{ca}
metrics = "127.0.0.1:0"
shutdown_grace = "10s"

[session]
keep_alive = "1s"
idle_timeout = "5s"

{services}
"#,
        ca = if client_ca {
            r#"client_ca = "certs/ca.pem""#
        } else {
            ""
        },
    )
}

/// The agent's `web` service forwarding to `local`, with the right token.
fn agent_web(local: impl std::fmt::Display) -> String {
    format!("[services.web]\nlocal = \"{local}\"\ntoken = \"{TOKEN}\"\n")
}

fn agent_toml(servers: &[&str], extra: &str, services: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"
servers = [{list}]
server_name = "localhost"
ca = "certs/ca.pem"
{extra}

[session]
keep_alive = "1s"
idle_timeout = "5s"

{services}
"#,
        list = list.join(", ")
    )
}

#[test]
fn curl_and_grpc_reach_the_right_agent_while_wrong_token_and_wrong_cert_are_refused() {
    let dir = cert_dir("cli-auth");
    let server_cfg = write(
        &dir,
        "server.toml",
        &server_toml(
            true,
            &format!(
                r#"
[services.web]
public = "127.0.0.1:0"
token = "{TOKEN}"

[services.grpc]
public = "127.0.0.1:0"
token = "{OTHER_TOKEN}"
allow = ["qymux-agent"]
"#
            ),
        ),
    );
    let (mut server, addr, publics) = start_server(&server_cfg, &["web", "grpc"]);
    let metrics_addr = field(
        &server
            .lines_snapshot()
            .into_iter()
            .find(|v| is_msg(v, "metrics listening at /metrics", &[]))
            .expect("the metrics line comes before the listening line"),
        "addr",
    );

    let grpc = python_with_grpc();
    let script = grpc_script(&dir);
    let grpc_a = grpc
        .as_deref()
        .map(|py| GrpcServer::start(py, &script, "agent A"));
    let grpc_c = grpc
        .as_deref()
        .map(|py| GrpcServer::start(py, &script, "WRONG agent C"));
    let grpc_local = |g: &Option<GrpcServer>| {
        g.as_ref()
            .map_or("127.0.0.1:9".to_owned(), |g| g.addr.clone())
    };

    // Agent A: the right tokens and an allowed certificate.
    let web_a = http_service("hello from agent A");
    let a_cfg = write(
        &dir,
        "agent-a.toml",
        &agent_toml(
            &[&addr],
            "cert = \"certs/client.pem\"\nkey = \"certs/client.key\"",
            &format!(
                "[services.web]\nlocal = \"{web_a}\"\ntoken = \"{TOKEN}\"\n\n\
                 [services.grpc]\nlocal = \"{}\"\ntoken = \"{OTHER_TOKEN}\"\n",
                grpc_local(&grpc_a)
            ),
        ),
    );
    let mut agent_a = Proc::agent("agent-a", &a_cfg);
    agent_a.wait_msg("claim granted", &[("service", "web")]);
    agent_a.wait_for("grpc granted", |v| {
        is_msg(v, "claim granted", &[("service", "grpc")])
    });

    // Agent B: an allowed certificate, the wrong token for web.
    let web_b = http_service("WRONG agent B");
    let b_cfg = write(
        &dir,
        "agent-b.toml",
        &agent_toml(
            &[&addr],
            "cert = \"certs/client.pem\"\nkey = \"certs/client.key\"",
            &format!(
                "[services.web]\nlocal = \"{web_b}\"\ntoken = \"wrong-token-0123456789abc\"\n"
            ),
        ),
    );
    let mut agent_b = Proc::agent("agent-b", &b_cfg);
    let refused = agent_b.wait_msg("claim refused", &[("service", "web")]);
    assert!(field(&refused, "reason").contains("token"), "{refused}");

    // Agent C: the right token for grpc, but a certificate whose name is not allowed.
    let c_cfg = write(
        &dir,
        "agent-c.toml",
        &agent_toml(
            &[&addr],
            "cert = \"certs/intruder.pem\"\nkey = \"certs/intruder.key\"",
            &format!(
                "[services.grpc]\nlocal = \"{}\"\ntoken = \"{OTHER_TOKEN}\"\n",
                grpc_local(&grpc_c)
            ),
        ),
    );
    let mut agent_c = Proc::agent("agent-c", &c_cfg);
    let refused = agent_c.wait_msg("claim refused", &[("service", "grpc")]);
    assert!(field(&refused, "reason").contains("intruder"), "{refused}");

    // Every public request reaches agent A.
    let mut curled = 0;
    if have_curl() {
        for _ in 0..10 {
            let body = curl(&format!("http://{}/", publics[0])).expect("curl through web");
            assert_eq!(body, "hello from agent A");
            curled += 1;
        }
    }
    if let Some(py) = &grpc {
        for i in 0..3 {
            let reply = grpc_call(py, &script, &publics[1], &format!("hi {i}"))
                .expect("grpc call through the tunnel");
            assert_eq!(reply, format!("agent A: hi {i}"));
        }
    }

    // Something that is not an agent: a failed handshake.
    {
        use std::io::Write as _;
        let mut bogus = std::net::TcpStream::connect(&addr).unwrap();
        bogus.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    }

    // /metrics, scraped and parsed.
    let samples = scrape_until(&metrics_addr, "failed handshake", |s| {
        metric(s, "qymux_handshakes_total", &[("outcome", "failed")]) >= 1.0
    });
    assert!(
        metric(
            &samples,
            "qymux_claims_refused_total",
            &[("reason", "bad_token")]
        ) >= 1.0
    );
    assert!(
        metric(
            &samples,
            "qymux_claims_refused_total",
            &[("reason", "not_allowed")]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &samples,
            "qymux_claims_granted_total",
            &[("service", "web")]
        ),
        1.0
    );
    assert_eq!(metric(&samples, "qymux_sessions", &[]), 3.0);
    assert!(metric(&samples, "qymux_handshakes_total", &[("outcome", "ok")]) >= 3.0);
    assert!(metric(&samples, "qymux_streams_total", &[("service", "web")]) >= f64::from(curled));
    if curled > 0 {
        assert!(
            metric(
                &samples,
                "qymux_bytes_total",
                &[("service", "web"), ("direction", "out")]
            ) > 0.0
        );
    }
    assert!(metric(&samples, "qymux_rtt_seconds_count", &[]) >= 1.0);

    // Tokens never reach a log.
    for p in [&server, &agent_a, &agent_b, &agent_c] {
        let log = p.log();
        for secret in [TOKEN, OTHER_TOKEN, "wrong-token-0123456789abc"] {
            assert!(!log.contains(secret), "{} logged a token", p.name);
        }
    }
    assert!(server.is_running() && agent_a.is_running());
}

#[test]
fn a_newer_agent_joins_the_pool_and_steals_nothing() {
    let dir = cert_dir("cli-pool");
    let server_cfg = write(
        &dir,
        "server.toml",
        &server_toml(
            false,
            &format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ),
    );
    let (mut server, addr, publics) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(&[&addr], "", &agent_web(echo)),
    );
    let mut first = Proc::agent("agent-1", &cfg);
    first.wait_msg("claim granted", &[("service", "web")]);
    let mut held = EchoClient::connect(&publics[0]);
    assert_eq!(held.roundtrip("before").unwrap(), "before");
    let mut second = Proc::agent("agent-2", &cfg);
    second.wait_msg("claim granted", &[("service", "web")]);
    // The first agent's connection carries on; new connections spread over both.
    assert_eq!(held.roundtrip("after").unwrap(), "after");
    for i in 0..6 {
        let mut c = EchoClient::connect(&publics[0]);
        assert_eq!(c.roundtrip(&format!("n{i}")).unwrap(), format!("n{i}"));
    }
    // Failover: once the server sees the first agent's session end (at once over TCP,
    // after the session's idle_timeout over QUIC), the second carries everything.
    first.sigkill();
    server.wait_for("the first agent's session to end", |v| {
        is_msg(v, "agent disconnected", &[]) || is_msg(v, "agent session closed", &[])
    });
    for i in 0..4 {
        let mut c = EchoClient::connect(&publics[0]);
        assert_eq!(c.roundtrip(&format!("m{i}")).unwrap(), format!("m{i}"));
    }
}

#[test]
fn public_side_caps_per_source_and_idle_timeout() {
    let dir = cert_dir("cli-caps");
    let server_cfg = write(
        &dir,
        "server.toml",
        &server_toml(
            false,
            &format!(
                "[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
                 max_connections_per_source = 1\nidle_timeout = \"1s\"\n"
            ),
        ),
    );
    let (mut server, addr, publics) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(&[&addr], "", &agent_web(echo)),
    );
    let mut agent = Proc::agent("agent", &cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);

    let mut first = EchoClient::connect(&publics[0]);
    assert_eq!(first.roundtrip("one").unwrap(), "one");
    let mut second = EchoClient::connect(&publics[0]);
    assert!(
        second.wait_closed(),
        "a second connection from 127.0.0.1 is refused"
    );
    server.wait_msg(
        "public connection refused",
        &[("reason", "max_connections_per_source")],
    );
    assert_eq!(first.roundtrip("two").unwrap(), "two");
    // Left idle, the first is closed by the idle timeout.
    assert!(first.wait_closed(), "an idle connection is closed");
    server.wait_msg("connection ended with an error", &[("service", "web")]);
}

#[test]
fn sighup_adds_a_service_while_another_carries_traffic_and_sigterm_drains() {
    let dir = cert_dir("cli-hup");
    let web = format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let extra = format!("[services.extra]\npublic = \"127.0.0.1:0\"\ntoken = \"{OTHER_TOKEN}\"\n");
    let server_cfg = write(&dir, "server.toml", &server_toml(false, &web));
    let (mut server, addr, publics) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let extra_local = http_service("extra says hello");
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(
            &[&addr],
            "",
            &format!(
                "[services.web]\nlocal = \"{echo}\"\ntoken = \"{TOKEN}\"\n\n\
                 [services.extra]\nlocal = \"{extra_local}\"\ntoken = \"{OTHER_TOKEN}\"\n"
            ),
        ),
    );
    let mut agent = Proc::agent("agent", &cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);
    let refused = agent.wait_msg("claim refused", &[("service", "extra")]);
    assert!(
        field(&refused, "reason").contains("no service"),
        "{refused}"
    );

    let mut conn = EchoClient::connect(&publics[0]);
    assert_eq!(conn.roundtrip("before reload").unwrap(), "before reload");

    write(
        &dir,
        "server.toml",
        &server_toml(false, &format!("{web}\n{extra}")),
    );
    server.signal("HUP");
    let listening = server.wait_msg("service listening", &[("service", "extra")]);
    let extra_public = field(&listening, "public");
    agent.wait_msg("claim granted", &[("service", "extra")]);
    if have_curl() {
        assert_eq!(
            curl(&format!("http://{extra_public}/")).expect("curl through extra"),
            "extra says hello"
        );
    }
    // The web connection opened before the reload still carries traffic.
    assert_eq!(conn.roundtrip("after reload").unwrap(), "after reload");

    // SIGTERM: no new connections, the one in progress finishes, then a clean exit.
    server.signal("TERM");
    server.wait_msg("SIGTERM: draining", &[]);
    assert_eq!(conn.roundtrip("while draining").unwrap(), "while draining");
    drop(conn);
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.logged("drained; bye", &[]));
}

#[test]
fn agent_with_connect_all_keeps_a_session_to_each_server_and_survives_a_sigkill() {
    let dir = cert_dir("cli-ha");
    let svc = format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let a_cfg = write(&dir, "server-a.toml", &server_toml(false, &svc));
    let b_cfg = write(&dir, "server-b.toml", &server_toml(false, &svc));
    let (mut server_a, addr_a, pub_a) = start_server(&a_cfg, &["web"]);
    let (_server_b, addr_b, pub_b) = start_server(&b_cfg, &["web"]);
    let echo = echo_service();
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(&[&addr_a, &addr_b], "connect = \"all\"", &agent_web(echo)),
    );
    let mut agent = Proc::agent("agent", &cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);
    agent.wait_msg("claim granted", &[("service", "web")]);
    for public in [&pub_a[0], &pub_b[0]] {
        let mut c = EchoClient::connect(public);
        assert_eq!(c.roundtrip("both").unwrap(), "both");
    }
    let mut held = EchoClient::connect(&pub_b[0]);
    assert_eq!(held.roundtrip("held").unwrap(), "held");

    server_a.sigkill();
    assert_eq!(held.roundtrip("still").unwrap(), "still");
    for i in 0..5 {
        let mut c = EchoClient::connect(&pub_b[0]);
        assert_eq!(c.roundtrip(&format!("b{i}")).unwrap(), format!("b{i}"));
    }
    assert!(agent.is_running(), "{}", agent.log());
}

#[test]
fn a_service_without_token_or_allow_stops_the_server_at_start() {
    let dir = cert_dir("cli-noauth");
    let cfg = write(
        &dir,
        "server.toml",
        &server_toml(false, "[services.open-door]\npublic = \"127.0.0.1:0\"\n"),
    );
    let out = run(&["server", "--config", &cfg.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("open-door") && stderr.contains("neither `token` nor `allow`"),
        "{stderr}"
    );
}

#[test]
fn unknown_config_keys_are_refused_with_their_name() {
    let dir = cert_dir("cli-keys");
    let cfg = write(
        &dir,
        "server.toml",
        &format!(
            "{}colour = \"blue\"\n",
            server_toml(false, "").replace("[session]", "[session_x]")
        ),
    );
    let out = run(&["server", "--config", &cfg.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session_x"), "{stderr}");

    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(
            &["127.0.0.1:1"],
            "",
            "[services.web]\nlocal = \"127.0.0.1:2\"\nlcoal = \"typo\"\n",
        ),
    );
    let out = run(&["agent", "--config", &cfg.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lcoal"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn probe_reports_quic_tcp_rtt_and_the_certificate() {
    let dir = cert_dir("cli-probe");
    let cfg = write(
        &dir,
        "server.toml",
        &server_toml(
            false,
            &format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ),
    );
    let mut server = Proc::server(&cfg);
    let listening = server.wait_msg("listening for agents", &[]);
    let addr = field(&listening, "addr");
    let fingerprint = field(&listening, "fingerprint");
    let out = run(&[
        "probe",
        &addr,
        "--ca",
        &dir.join("certs/ca.pem").to_string_lossy(),
        "--server-name",
        "localhost",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("quic  ok"), "{stdout}");
    assert!(stdout.contains("tcp   ok"), "{stdout}");
    assert!(stdout.contains("auto  quic"), "{stdout}");
    assert!(
        stdout.contains("rtt   ") && !stdout.contains("rtt   n/a"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sha256:{fingerprint} (verified with the CA)")),
        "{stdout}"
    );
    assert!(stdout.contains("CN=localhost"), "{stdout}");

    // Nothing listens here: a failure, said plainly.
    drop(server);
    let out = run(&["probe", &addr, "--timeout", "2s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither QUIC nor TCP"));
}

#[test]
fn cert_writes_the_dev_set_and_refuses_to_overwrite() {
    let dir = TempDir::new("cli-cert").unwrap();
    let out_dir = dir.join("certs");
    let out = run(&["cert", "--out", &out_dir.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let out = run(&["cert", "--out", &out_dir.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));

    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("qymux {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn sighup_changing_a_token_revokes_the_claim_and_rebinds_the_same_address() {
    let dir = cert_dir("cli-hup-token");
    let server_cfg = write(
        &dir,
        "server.toml",
        &server_toml(
            false,
            &format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ),
    );
    let (mut server, addr, publics) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let token_file = write(&dir, "web.token", &format!("{TOKEN}\n"));
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(
            &[&addr],
            "",
            &format!(
                "[services.web]\nlocal = \"{echo}\"\ntoken_file = {:?}\n",
                token_file.file_name().unwrap()
            ),
        ),
    );
    let mut agent = Proc::agent("agent", &cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);

    // The same public address, another token: the service restarts there, the agent's
    // claim is revoked, and its old token is refused.
    write(
        &dir,
        "server.toml",
        &server_toml(
            false,
            &format!(
                "[services.web]\npublic = \"{}\"\ntoken = \"{OTHER_TOKEN}\"\n",
                publics[0]
            ),
        ),
    );
    server.signal("HUP");
    server.wait_msg("service stopped", &[("service", "web")]);
    let again = server.wait_msg("service listening", &[("service", "web")]);
    assert_eq!(field(&again, "public"), publics[0]);
    agent.wait_msg("claim revoked", &[("service", "web")]);
    agent.wait_msg("claim refused", &[("service", "web")]);
    server.wait_msg("claim refused", &[("service", "web")]);
    let mut c = EchoClient::connect(&publics[0]);
    assert!(c.wait_closed(), "no agent holds web any more: reset");
}

#[test]
fn agent_sighup_adds_and_releases_services_while_another_carries_traffic() {
    let dir = cert_dir("cli-agent-hup");
    let services = format!(
        "[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [services.extra]\npublic = \"127.0.0.1:0\"\ntoken = \"{OTHER_TOKEN}\"\n"
    );
    let server_cfg = write(&dir, "server.toml", &server_toml(false, &services));
    let (mut server, addr, publics) = start_server(&server_cfg, &["web", "extra"]);
    let echo = echo_service();
    let extra_local = echo_service();
    let web_only = agent_web(echo);
    let cfg = write(&dir, "agent.toml", &agent_toml(&[&addr], "", &web_only));
    let mut agent = Proc::agent("agent", &cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);
    let mut conn = EchoClient::connect(&publics[0]);
    assert_eq!(conn.roundtrip("before").unwrap(), "before");

    // Add extra.
    write(
        &dir,
        "agent.toml",
        &agent_toml(
            &[&addr],
            "",
            &format!(
                "{web_only}\n[services.extra]\nlocal = \"{extra_local}\"\ntoken = \"{OTHER_TOKEN}\"\n"
            ),
        ),
    );
    agent.signal("HUP");
    agent.wait_msg("claim granted", &[("service", "extra")]);
    let mut extra = EchoClient::connect(&publics[1]);
    assert_eq!(extra.roundtrip("extra").unwrap(), "extra");
    assert_eq!(conn.roundtrip("during").unwrap(), "during");

    // Drop extra again: the server takes the agent out of its pool.
    write(&dir, "agent.toml", &agent_toml(&[&addr], "", &web_only));
    agent.signal("HUP");
    server.wait_msg("claim released by the agent", &[("service", "extra")]);
    let mut gone = EchoClient::connect(&publics[1]);
    assert!(gone.wait_closed(), "nobody holds extra any more");
    assert_eq!(conn.roundtrip("after").unwrap(), "after");
}

#[test]
fn agent_metrics_count_the_fallback_to_tcp_and_a_reconnect() {
    let dir = cert_dir("cli-agent-metrics");
    // A server on TCP only: an agent in auto mode falls back from QUIC.
    let tcp_only = |listen: &str| {
        server_toml(
            false,
            &format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{listen}\"\nmode = \"tcp\""),
        )
    };
    let server_cfg = write(&dir, "server.toml", &tcp_only("127.0.0.1:0"));
    let (mut server, addr, _) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(&[&addr], "metrics = \"127.0.0.1:0\"", &agent_web(echo)),
    );
    let mut agent = Proc::agent("agent", &cfg);
    let metrics_addr = field(
        &agent.wait_msg("metrics listening at /metrics", &[]),
        "addr",
    );
    agent.wait_msg("claim granted", &[("service", "web")]);
    let samples = scrape(&metrics_addr);
    assert_eq!(metric(&samples, "qymux_fallbacks_total", &[]), 1.0);
    assert_eq!(metric(&samples, "qymux_reconnects_total", &[]), 0.0);

    // The server dies and comes back on the same address: the agent reconnects.
    server.sigkill();
    let again_cfg = write(&dir, "server-again.toml", &tcp_only(&addr));
    let (_again, _, _) = start_server(&again_cfg, &["web"]);
    agent.wait_msg("claim granted", &[("service", "web")]);
    let samples = scrape(&metrics_addr);
    assert_eq!(metric(&samples, "qymux_reconnects_total", &[]), 1.0);
    assert_eq!(metric(&samples, "qymux_fallbacks_total", &[]), 2.0);
    assert!(metric(&samples, "qymux_handshakes_total", &[("outcome", "ok")]) >= 2.0);
}

#[test]
fn cert_days_and_crl_then_sighup_locks_out_a_revoked_agent() {
    let dir = cert_dir("cli-crl");
    let certs = dir.join("certs");
    let certs_arg = certs.to_string_lossy().into_owned();

    // --days: short-lived leaves (backdated an hour); the CA keeps its own validity.
    let short = dir.join("short");
    let out = run(&["cert", "--out", &short.to_string_lossy(), "--days", "3"]);
    assert!(out.status.success(), "{out:?}");
    for file in ["server.pem", "client.pem", "ca.pem"] {
        let pem = std::fs::read(short.join(file)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        if file == "ca.pem" {
            assert!(span > 365 * 86_400, "{file}: {span} s");
        } else {
            assert_eq!(span, 3 * 86_400 + 3_600, "{file}");
        }
    }

    // A CRL that revokes nothing yet, loaded by the server.
    let out = run(&["cert", "--out", &certs_arg, "--crl"]);
    assert!(out.status.success(), "{out:?}");
    let svc = format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let server_text = server_toml(true, &svc).replace(
        r#"client_ca = "certs/ca.pem""#,
        "client_ca = \"certs/ca.pem\"\nclient_crl = [\"certs/crl.pem\"]",
    );
    let server_cfg = write(&dir, "server.toml", &server_text);
    let (mut server, addr, publics) = start_server(&server_cfg, &["web"]);
    let echo = echo_service();
    let agent_cfg = write(
        &dir,
        "agent.toml",
        &agent_toml(
            &[&addr],
            "cert = \"certs/client.pem\"\nkey = \"certs/client.key\"",
            &agent_web(echo),
        ),
    );
    let mut agent = Proc::agent("agent", &agent_cfg);
    agent.wait_msg("claim granted", &[("service", "web")]);
    let mut conn = EchoClient::connect(&publics[0]);
    assert_eq!(conn.roundtrip("not revoked").unwrap(), "not revoked");

    // Revoke the agent's certificate and reload: its next handshake is refused.
    let client_pem = certs.join("client.pem").to_string_lossy().into_owned();
    let out = run(&[
        "cert",
        "--out",
        &certs_arg,
        "--crl",
        "--revoke",
        &client_pem,
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("revoking 1 certificate(s)"), "{stdout}");
    server.signal("HUP");
    server.wait_msg("SIGHUP: client_crl reloaded", &[]);
    agent.sigkill();
    let mut again = Proc::agent("agent-again", &agent_cfg);
    let failed = again.wait_msg("session lost or dial failed; retrying", &[]);
    let error = field(&failed, "error");
    assert!(error.to_lowercase().contains("revoked"), "{error}");
    assert!(!again.logged("claim granted", &[]));
}

#[test]
fn a_crl_without_client_ca_is_refused_at_start() {
    let dir = cert_dir("cli-crl-noca");
    let out = run(&[
        "cert",
        "--out",
        &dir.join("certs").to_string_lossy(),
        "--crl",
    ]);
    assert!(out.status.success(), "{out:?}");
    let svc = format!("[services.web]\npublic = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let text = server_toml(false, &svc)
        .replace("metrics = ", "client_crl = [\"certs/crl.pem\"]\nmetrics = ");
    let cfg = write(&dir, "server.toml", &text);
    let out = run(&["server", "--config", &cfg.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client_crl") && stderr.contains("client_ca"),
        "{stderr}"
    );
}
