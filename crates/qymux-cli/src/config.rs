//! The TOML config files of `qymux server` and `qymux agent`.
//!
//! Unknown keys are refused (serde's `deny_unknown_fields`, the error names the key),
//! and relative paths resolve from the directory of the config file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use qymux::{Mode, Options};
use serde::Deserialize;

/// Public-side defaults, documented in docs/cli.md.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 64;
pub(crate) const DEFAULT_PUBLIC_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A duration written as `"500ms"`, `"30s"`, `"5m"` or `"2h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected e.g. \"500ms\", \"30s\", \"5m\", \"2h\"")
    })?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: the unit must be ms, s, m or h"
            ));
        }
    };
    Ok(duration)
}

/// `mode = "auto" | "quic" | "tcp"`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeName {
    #[default]
    Auto,
    Quic,
    Tcp,
}

impl From<ModeName> for Mode {
    fn from(m: ModeName) -> Mode {
        match m {
            ModeName::Auto => Mode::Auto,
            ModeName::Quic => Mode::Quic,
            ModeName::Tcp => Mode::Tcp,
        }
    }
}

/// `[session]`: the options of every session, on either side.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionOptions {
    keep_alive: Option<Dur>,
    /// `keep_alive = "off"` is spelled `keep_alive_off = true`.
    #[serde(default)]
    keep_alive_off: bool,
    idle_timeout: Option<Dur>,
    connect_timeout: Option<Dur>,
    handshake_timeout: Option<Dur>,
    max_streams: Option<usize>,
    max_sessions: Option<usize>,
}

impl SessionOptions {
    pub(crate) fn to_options(&self) -> Result<Options> {
        let mut o = Options::default();
        if let Some(d) = self.keep_alive {
            o.keep_alive_interval(Some(d.0));
        }
        if self.keep_alive_off {
            o.keep_alive_interval(None);
        }
        if let Some(d) = self.idle_timeout {
            o.idle_timeout(d.0);
        }
        if let Some(d) = self.connect_timeout {
            o.connect_timeout(d.0);
        }
        if let Some(d) = self.handshake_timeout {
            o.handshake_timeout(d.0);
        }
        if let Some(n) = self.max_streams {
            o.max_streams(n);
        }
        if let Some(n) = self.max_sessions {
            o.max_sessions(n);
        }
        o.validate().context("invalid [session] options")?;
        Ok(o)
    }
}

/// The server's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) mode: ModeName,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
    /// Certificate revocation lists for client certificates (PEM or DER files).
    #[serde(default)]
    pub(crate) client_crl: Vec<PathBuf>,
    pub(crate) metrics: Option<String>,
    pub(crate) shutdown_grace: Option<Dur>,
    #[serde(default)]
    pub(crate) session: SessionOptions,
    #[serde(default)]
    pub(crate) services: BTreeMap<String, ServerServiceFile>,
}

/// `[services.NAME]` on the server.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerServiceFile {
    pub(crate) public: String,
    pub(crate) token: Option<String>,
    /// A file holding the token (trailing whitespace ignored), instead of `token`.
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
    pub(crate) idle_timeout: Option<Dur>,
}

/// A server service, checked, with its defaults filled in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServiceDef {
    pub(crate) name: String,
    pub(crate) public: String,
    pub(crate) token: Option<String>,
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_source: usize,
    pub(crate) idle_timeout: Duration,
}

/// Never prints the token.
impl fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .field("public", &self.public)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow", &self.allow)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl fmt::Debug for ServerServiceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerServiceFile")
            .field("public", &self.public)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// The server's config, checked, paths resolved.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) listen: String,
    pub(crate) mode: Mode,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) client_crl: Vec<PathBuf>,
    pub(crate) metrics: Option<String>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) options: Options,
    pub(crate) services: BTreeMap<String, ServiceDef>,
}

/// Names of services: what the wire carries in one length byte, and what logs and
/// metric labels can show as they are.
pub(crate) fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "service name {name:?} must be 1 to 64 characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "service name {name:?} may only hold ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// `token` or the contents of `token_file` (resolved from `base`), not both.
fn token_of(
    service: &str,
    token: Option<String>,
    file: Option<&Path>,
    base: &Path,
) -> Result<Option<String>> {
    match (token, file) {
        (Some(_), Some(_)) => bail!("service {service:?}: set `token` or `token_file`, not both"),
        (token, None) => Ok(token),
        (None, Some(file)) => {
            let path = resolve(base, file);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("service {service:?}: reading token_file {}", path.display())
            })?;
            Ok(Some(text.trim_end().to_owned()))
        }
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
}

fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl ServerConfig {
    /// Reads and checks a server config file.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let file: ServerFile = read_toml(path)?;
        Self::from_file(file, &base_dir(path)).with_context(|| format!("in {}", path.display()))
    }

    pub(crate) fn from_file(file: ServerFile, base: &Path) -> Result<Self> {
        let mut services = BTreeMap::new();
        for (name, mut s) in file.services {
            check_service_name(&name).map_err(anyhow::Error::msg)?;
            s.token = token_of(&name, s.token.take(), s.token_file.as_deref(), base)?;
            let has_token = s.token.as_deref().is_some_and(|t| !t.is_empty());
            if s.token.as_deref() == Some("") {
                bail!("service {name:?}: the token is empty");
            }
            let allow = s.allow.filter(|a| !a.is_empty());
            if !has_token && allow.is_none() {
                bail!(
                    "service {name:?} has neither `token` nor `allow`: anyone could claim it. \
                     Give it a token, a list of allowed client certificate names, or both"
                );
            }
            if allow.is_some() && file.client_ca.is_none() {
                bail!(
                    "service {name:?} has `allow`, which needs client certificates: \
                     set `client_ca` too"
                );
            }
            if let Some(t) = &s.token
                && t.len() < 16
            {
                bail!("service {name:?}: the token must be at least 16 characters long");
            }
            let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
            let per_source = s
                .max_connections_per_source
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_SOURCE);
            if max_connections == 0 || per_source == 0 {
                bail!("service {name:?}: connection caps must be at least 1");
            }
            if s.idle_timeout.is_some_and(|d| d.0.is_zero()) {
                bail!("service {name:?}: idle_timeout must be more than zero");
            }
            services.insert(
                name.clone(),
                ServiceDef {
                    name,
                    public: s.public,
                    token: s.token,
                    allow,
                    max_connections,
                    max_connections_per_source: per_source,
                    idle_timeout: s.idle_timeout.map_or(DEFAULT_PUBLIC_IDLE_TIMEOUT, |d| d.0),
                },
            );
        }
        if !file.client_crl.is_empty() && file.client_ca.is_none() {
            bail!(
                "`client_crl` is set but `client_ca` is not: without client certificates there is nothing to revoke"
            );
        }
        Ok(ServerConfig {
            listen: file.listen,
            mode: file.mode.into(),
            cert: resolve(base, &file.cert),
            key: resolve(base, &file.key),
            client_ca: file.client_ca.map(|p| resolve(base, &p)),
            client_crl: file.client_crl.iter().map(|p| resolve(base, p)).collect(),
            metrics: file.metrics,
            shutdown_grace: file.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
            options: file.session.to_options()?,
            services,
        })
    }
}

/// `connect = "first" | "all"`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConnectMode {
    /// One session, to the first server that answers; the next on failure.
    #[default]
    First,
    /// A session to every server at once.
    All,
}

/// The agent's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentFile {
    server: Option<String>,
    servers: Option<Vec<String>>,
    #[serde(default)]
    connect: ConnectMode,
    #[serde(default)]
    mode: ModeName,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    pin: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    metrics: Option<String>,
    #[serde(default)]
    session: SessionOptions,
    #[serde(default)]
    services: BTreeMap<String, AgentServiceFile>,
}

/// `[services.NAME]` on the agent.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentServiceFile {
    local: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

impl fmt::Debug for AgentServiceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentServiceFile")
            .field("local", &self.local)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// How the agent verifies the server.
#[derive(Debug, Clone)]
pub(crate) enum Trust {
    Ca(PathBuf),
    Pin(qymux::cert::Fingerprint),
}

/// An agent service.
#[derive(Clone)]
pub(crate) struct AgentService {
    pub(crate) local: String,
    pub(crate) token: Option<String>,
}

impl fmt::Debug for AgentService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentService")
            .field("local", &self.local)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The agent's config, checked, paths resolved.
#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    pub(crate) servers: Vec<String>,
    pub(crate) connect: ConnectMode,
    pub(crate) mode: Mode,
    pub(crate) server_name: Option<String>,
    pub(crate) trust: Trust,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) metrics: Option<String>,
    pub(crate) options: Options,
    pub(crate) services: BTreeMap<String, AgentService>,
}

impl AgentConfig {
    /// Reads and checks an agent config file.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let file: AgentFile = read_toml(path)?;
        Self::from_file(file, &base_dir(path)).with_context(|| format!("in {}", path.display()))
    }

    fn from_file(file: AgentFile, base: &Path) -> Result<Self> {
        let servers = match (file.server, file.servers) {
            (Some(s), None) => vec![s],
            (None, Some(list)) if !list.is_empty() => list,
            (None, Some(_)) => bail!("`servers` is empty"),
            (None, None) => bail!("no server: set `server` or `servers`"),
            (Some(_), Some(_)) => bail!("set `server` or `servers`, not both"),
        };
        let trust = match (file.ca, file.pin) {
            (Some(ca), None) => Trust::Ca(resolve(base, &ca)),
            (None, Some(pin)) => {
                Trust::Pin(pin.parse().map_err(|e| anyhow::anyhow!("`pin`: {e}"))?)
            }
            (None, None) => bail!(
                "no way to verify the server: set `ca` (a CA certificate file) or `pin` \
                 (the server certificate's SHA-256 fingerprint)"
            ),
            (Some(_), Some(_)) => bail!("set `ca` or `pin`, not both"),
        };
        let identity = match (file.cert, file.key) {
            (Some(c), Some(k)) => Some((resolve(base, &c), resolve(base, &k))),
            (None, None) => None,
            _ => bail!("`cert` and `key` go together: set both or neither"),
        };
        if file.services.is_empty() {
            bail!("no services: add a [services.NAME] table with `local`");
        }
        let mut services = BTreeMap::new();
        for (name, s) in file.services {
            check_service_name(&name).map_err(anyhow::Error::msg)?;
            let token = token_of(&name, s.token, s.token_file.as_deref(), base)?;
            services.insert(
                name,
                AgentService {
                    local: s.local,
                    token,
                },
            );
        }
        Ok(AgentConfig {
            servers,
            connect: file.connect,
            mode: file.mode.into(),
            server_name: file.server_name,
            trust,
            identity,
            metrics: file.metrics,
            options: file.session.to_options()?,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<ServerConfig> {
        let file: ServerFile = toml::from_str(text)?;
        ServerConfig::from_file(file, Path::new("/etc/qymux"))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn server_paths_and_defaults() {
        let c = server(
            r#"
            listen = "0.0.0.0:7000"
            cert = "server.pem"
            key = "/abs/server.key"
            [services.web]
            public = "0.0.0.0:8080"
            token = "0123456789abcdef"
            "#,
        )
        .unwrap();
        assert_eq!(c.cert, Path::new("/etc/qymux/server.pem"));
        assert_eq!(c.key, Path::new("/abs/server.key"));
        assert_eq!(c.mode, Mode::Auto);
        let web = &c.services["web"];
        assert_eq!(web.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(!format!("{web:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn server_refusals() {
        let base = "listen = \"x:1\"\ncert = \"c\"\nkey = \"k\"\n";
        let e = server(&format!("{base}[services.open]\npublic = \"x:2\"\n")).unwrap_err();
        assert!(e.to_string().contains("\"open\""), "{e}");
        let e = server(&format!(
            "{base}[services.a]\npublic = \"x:2\"\ntoken = \"0123456789abcdef\"\nidle_timeout = \"0s\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        let e = server(&format!("{base}colour = 1\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = server(&format!(
            "{base}[services.a]\npublic = \"x:2\"\nallow = [\"n\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("client_ca"), "{e}");
        let e = server(&format!(
            "{base}[services.a]\npublic = \"x:2\"\ntoken = \"short\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("16"), "{e}");
        let e = server(&format!(
            "{base}[services.\"a b\"]\npublic = \"x:2\"\ntoken = \"0123456789abcdef\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("a b"), "{e}");
    }

    #[test]
    fn token_files_resolve_from_the_config_dir() {
        let dir = std::env::temp_dir().join(format!("qymux-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("web.token"), "0123456789abcdef-from-file\n").unwrap();
        let file: ServerFile = toml::from_str(
            "listen = \"x:1\"\ncert = \"c\"\nkey = \"k\"\n\
             [services.web]\npublic = \"x:2\"\ntoken_file = \"web.token\"\n",
        )
        .unwrap();
        let c = ServerConfig::from_file(file, &dir).unwrap();
        assert_eq!(
            c.services["web"].token.as_deref(),
            Some("0123456789abcdef-from-file")
        );
        let file: ServerFile = toml::from_str(
            "listen = \"x:1\"\ncert = \"c\"\nkey = \"k\"\n\
             [services.web]\npublic = \"x:2\"\ntoken_file = \"missing.token\"\n",
        )
        .unwrap();
        let e = ServerConfig::from_file(file, &dir).unwrap_err();
        assert!(format!("{e:#}").contains("missing.token"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn agent_refusals() {
        let parse = |t: &str| -> Result<AgentConfig> {
            AgentConfig::from_file(toml::from_str(t)?, Path::new("/x"))
        };
        let e = parse("server = \"a:1\"\n[services.a]\nlocal = \"b:2\"\n").unwrap_err();
        assert!(e.to_string().contains("`ca`"), "{e}");
        let e = parse(
            "server = \"a:1\"\nca = \"c\"\nconnect = \"some\"\n[services.a]\nlocal = \"b:2\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("some"), "{e}");
        let c = parse(
            "servers = [\"a:1\", \"b:1\"]\nconnect = \"all\"\nca = \"ca.pem\"\n[services.a]\nlocal = \"b:2\"\n",
        )
        .unwrap();
        assert_eq!(c.connect, ConnectMode::All);
        assert!(matches!(&c.trust, Trust::Ca(p) if p == Path::new("/x/ca.pem")));
    }
}

/// `--service NAME=ADDR`.
pub(crate) fn parse_service_flag(text: &str) -> Result<(String, String), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=ADDRESS, e.g. web=0.0.0.0:8080"))?;
    check_service_name(name)?;
    if addr.is_empty() {
        return Err(format!("{text:?}: the address is empty"));
    }
    Ok((name.to_owned(), addr.to_owned()))
}

/// The token of a one-service setup without a file: `--token-file`, else the
/// environment variable `QYMUX_TOKEN` (never a command-line argument, which `ps` shows).
fn flag_token(token_file: Option<&Path>) -> Result<Option<String>> {
    match token_file {
        Some(_) => token_of("", None, token_file, Path::new(".")),
        None => Ok(std::env::var("QYMUX_TOKEN").ok().filter(|t| !t.is_empty())),
    }
}

/// A one-service server from command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerFlags {
    /// The address agents dial.
    #[arg(long, requires_all = ["cert", "key", "service"])]
    pub(crate) listen: Option<String>,
    /// The server certificate (PEM).
    #[arg(long)]
    pub(crate) cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Require agents to present a certificate from this CA.
    #[arg(long)]
    pub(crate) client_ca: Option<PathBuf>,
    /// A certificate revocation list for agents' certificates (repeatable; read again
    /// on SIGHUP).
    #[arg(long, requires = "client_ca")]
    pub(crate) client_crl: Vec<PathBuf>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub(crate) metrics: Option<String>,
    /// The service, `NAME=PUBLIC_ADDRESS`.
    #[arg(long, value_parser = parse_service_flag)]
    pub(crate) service: Option<(String, String)>,
    /// The service's token, from a file (or the environment variable QYMUX_TOKEN).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// A client certificate name allowed to claim the service (repeatable).
    #[arg(long)]
    pub(crate) allow: Vec<String>,
}

impl ServerConfig {
    /// A one-service server from flags, checked like a file.
    pub(crate) fn from_flags(f: &ServerFlags) -> Result<Self> {
        let (Some(listen), Some(cert), Some(key), Some((name, public))) =
            (&f.listen, &f.cert, &f.key, &f.service)
        else {
            bail!("without --config, give --listen, --cert, --key and --service NAME=PUBLIC");
        };
        let service = ServerServiceFile {
            public: public.clone(),
            token: flag_token(f.token_file.as_deref())?,
            token_file: None,
            allow: (!f.allow.is_empty()).then(|| f.allow.clone()),
            max_connections: None,
            max_connections_per_source: None,
            idle_timeout: None,
        };
        let file = ServerFile {
            listen: listen.clone(),
            mode: ModeName::Auto,
            cert: cert.clone(),
            key: key.clone(),
            client_ca: f.client_ca.clone(),
            client_crl: f.client_crl.clone(),
            metrics: f.metrics.clone(),
            shutdown_grace: None,
            session: SessionOptions::default(),
            services: BTreeMap::from([(name.clone(), service)]),
        };
        Self::from_file(file, Path::new("."))
    }
}

/// A one-service agent from command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AgentFlags {
    /// The server to dial (repeat for several: the next on failure).
    #[arg(long = "server", requires = "service")]
    pub(crate) servers: Vec<String>,
    /// Verify the server with this CA certificate.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Verify the server by its certificate's SHA-256 fingerprint.
    #[arg(long)]
    pub(crate) pin: Option<String>,
    /// The name to verify the server against (default: the host of --server).
    #[arg(long)]
    pub(crate) server_name: Option<String>,
    /// The service, `NAME=LOCAL_ADDRESS`.
    #[arg(long, value_parser = parse_service_flag)]
    pub(crate) service: Option<(String, String)>,
    /// The service's token, from a file (or the environment variable QYMUX_TOKEN).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
}

impl AgentConfig {
    /// A one-service agent from flags, checked like a file.
    pub(crate) fn from_flags(f: &AgentFlags) -> Result<Self> {
        let Some((name, local)) = &f.service else {
            bail!("without --config, give --server, --ca or --pin, and --service NAME=LOCAL");
        };
        let file = AgentFile {
            server: None,
            servers: Some(f.servers.clone()),
            connect: ConnectMode::First,
            mode: ModeName::Auto,
            server_name: f.server_name.clone(),
            ca: f.ca.clone(),
            pin: f.pin.clone(),
            cert: None,
            key: None,
            metrics: None,
            session: SessionOptions::default(),
            services: BTreeMap::from([(
                name.clone(),
                AgentServiceFile {
                    local: local.clone(),
                    token: flag_token(f.token_file.as_deref())?,
                    token_file: None,
                },
            )]),
        };
        Self::from_file(file, Path::new("."))
    }
}
