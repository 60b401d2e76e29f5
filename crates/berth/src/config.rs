//! Configuration: `berth.toml`, overridden by `BERTH_*` environment
//! variables, overridden by flags. Durations are strings (`"30s"`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::duration::parse_duration;
use berth_core::id::{validate_owner, validate_template_name};
use serde::Deserialize;

use crate::http::roles::Role;
use crate::services::webhooks::WebhookSpec;
use crate::template_doc::TemplateDoc;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
pub const DEFAULT_DATA_DIR: &str = "./berth-data";
pub const DEFAULT_OWNER: &str = "berth";
pub const DEFAULT_NETWORK: &str = "berth";
pub const DEFAULT_CONFIG_FILE: &str = "berth.toml";

/// Flags of `berth serve`; each also reads its `BERTH_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Configuration file [default: ./berth.toml when it exists]
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:7878]
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the SQLite database and runtime state [default: ./berth-data]
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://… or sqlite://… [default: SQLite in the data directory]
    #[arg(long, env = "BERTH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// unix:///var/run/docker.sock or tcp://host:port [default: the local socket]
    #[arg(long, env = "BERTH_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Owner name: container name prefix and io.berth.owner label [default: berth]
    #[arg(long, env = "BERTH_OWNER")]
    pub owner: Option<String>,
    /// Docker network for runtimes [default: berth]
    #[arg(long, env = "BERTH_NETWORK")]
    pub network: Option<String>,
    /// Bearer token required on /v1 (required to listen beyond loopback)
    #[arg(long, env = "BERTH_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Redis for the job streams and outbox (optional)
    #[arg(long, env = "BERTH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// How often the reconciler runs [default: 30s]
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL")]
    pub reconcile_interval: Option<String>,
    /// Containers younger than this are not adopted by the reconciler [default: 30s]
    #[arg(long, env = "BERTH_ADOPTION_GRACE")]
    pub adoption_grace: Option<String>,
    /// Stream jobs a dead consumer left pending this long are taken over [default: 30s]
    #[arg(long, env = "BERTH_JOB_CLAIM_IDLE")]
    pub job_claim_idle: Option<String>,
    /// Deadline of one operation, image pull included [default: 5m]
    #[arg(long, env = "BERTH_OPERATION_TIMEOUT")]
    pub operation_timeout: Option<String>,
    /// How long shutdown waits for operations in flight [default: 60s]
    #[arg(long, env = "BERTH_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// PEM certificate chain: serve the API over HTTPS (with --tls-key)
    #[arg(long, env = "BERTH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "BERTH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    docker_host: Option<String>,
    owner: Option<String>,
    network: Option<String>,
    api_token: Option<String>,
    redis_url: Option<String>,
    reconcile_interval: Option<String>,
    adoption_grace: Option<String>,
    job_claim_idle: Option<String>,
    operation_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    image_watch: Option<ImageWatchConfig>,
    plugins: Option<PluginsConfig>,
    #[serde(default)]
    templates: Vec<TemplateDoc>,
    #[serde(default)]
    registries: std::collections::BTreeMap<String, RegistryEntry>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    webhooks: Vec<WebhookEntry>,
}

/// `[[webhooks]]`: where notification intents are POSTed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// Unique; default: derived from the URL.
    pub name: Option<String>,
    /// `http://` or `https://`.
    pub url: String,
    /// Keys the `X-Berth-Signature` HMAC.
    pub secret: String,
    /// Notification types to deliver; absent = all.
    pub types: Option<Vec<String>>,
}

/// `[[tokens]]`: a further API token with a name and a role. The secret is
/// given as `token`, or as `token_sha256` (its hex SHA-256) so the file
/// need not hold it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: Option<String>,
    role: Option<String>,
    token: Option<String>,
    token_sha256: Option<String>,
}

/// The name `api_token` goes by (role `admin`).
pub const API_TOKEN_NAME: &str = "admin";

/// A token berth accepts, kept as the SHA-256 of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The actor in the operation log and pin history.
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

impl ApiToken {
    pub fn from_secret(name: &str, role: Role, secret: &str) -> ApiToken {
        ApiToken {
            name: name.to_string(),
            role,
            sha256: sha256(secret.as_bytes()),
        }
    }
}

/// Leaves the digest out of logs.
impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn parse_hex_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `tls_cert` and `tls_key`: PEM files of the API's HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[registries."host:port"]`: credentials and transport for one registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    pub username: Option<String>,
    pub password: Option<String>,
    /// Plain HTTP (loopback registries always are).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageWatchConfig {
    #[serde(default)]
    pub enabled: bool,
    pub interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    pub sweep_interval: Option<String>,
    /// `git+file://` sources (off by default: they read berth's own disk).
    #[serde(default)]
    pub allow_file_sources: bool,
    /// Hosts plugin sources may name (any when absent).
    pub allowed_hosts: Option<Vec<String>>,
    /// Longest one git command may take.
    pub git_timeout: Option<String>,
}

/// The settled configuration of `berth serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub docker_host: Option<String>,
    pub owner: String,
    pub network: String,
    pub api_token: Option<String>,
    pub redis_url: Option<String>,
    pub reconcile_interval: Duration,
    pub adoption_grace: Duration,
    pub job_claim_idle: Duration,
    pub operation_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub image_watch_enabled: bool,
    pub image_watch_interval: Duration,
    pub plugin_sweep_interval: Duration,
    pub plugin_allow_file_sources: bool,
    pub plugin_allowed_hosts: Option<Vec<String>>,
    pub plugin_git_timeout: Duration,
    /// `[[templates]]`, each with its name; upserted at boot.
    pub templates: Vec<TemplateDoc>,
    pub registries: std::collections::BTreeMap<String, RegistryEntry>,
    /// `api_token` (as `admin`) and `[[tokens]]`; empty means an open API.
    pub tokens: Vec<ApiToken>,
    /// Whether `[[tokens]]` name further tokens: then a token's name is the
    /// actor and `X-Berth-Actor` cannot change it.
    pub scoped_tokens: bool,
    /// HTTPS on the API when set.
    pub tls: Option<TlsFiles>,
    /// `[[webhooks]]`, validated, names unique.
    pub webhooks: Vec<WebhookSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// toml's message names the line, the column and the key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => {
            parse_duration(text).map_err(|e| ConfigError::Invalid(format!("{key}: {}", e.message)))
        }
    }
}

impl Config {
    /// Reads the file (if any) and layers the flags and environment over it.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(read_file(path)?),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Some(read_file(Path::new(DEFAULT_CONFIG_FILE))?)
            }
            None => None,
        };
        Config::merge(args, file.unwrap_or_default())
    }

    /// Parses a configuration file's text (for tests and `load`).
    pub fn from_toml(args: &ServeArgs, text: &str, path: &str) -> Result<Config, ConfigError> {
        Config::merge(args, parse_file(text, path)?)
    }

    fn merge(args: &ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listen: {listen_text:?} is not an address; write an IP and a port, such as \"127.0.0.1:7878\""
            ))
        })?;
        let owner = args
            .owner
            .clone()
            .or(file.owner)
            .unwrap_or_else(|| DEFAULT_OWNER.to_string());
        validate_owner(&owner)
            .map_err(|e| ConfigError::Invalid(format!("owner: {}", e.message)))?;
        let network = args
            .network
            .clone()
            .or(file.network)
            .unwrap_or_else(|| DEFAULT_NETWORK.to_string());
        if network.is_empty()
            || !network
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(ConfigError::Invalid(format!(
                "network: {network:?} is not a valid Docker network name"
            )));
        }
        let api_token = args.api_token.clone().or(file.api_token);
        if api_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "api_token: the token must not be empty".into(),
            ));
        }
        let tokens = tokens(api_token.as_deref(), &file.tokens)?;
        let webhooks = webhooks(&file.webhooks)?;
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "tls_key: tls_cert is set, so give its private key too (or neither)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "tls_cert: tls_key is set, so give its certificate too (or neither)".into(),
                ))
            }
        };
        for (host, entry) in &file.registries {
            if entry.username.is_some() != entry.password.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "registries.\"{host}\": give both username and password, or neither"
                )));
            }
        }
        let image_watch = file.image_watch.unwrap_or_default();
        let plugins = file.plugins.unwrap_or_default();
        if let Some(hosts) = &plugins.allowed_hosts {
            if let Some(bad) = hosts.iter().find(|h| {
                h.is_empty()
                    || h.starts_with('-')
                    || h.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
            }) {
                return Err(ConfigError::Invalid(format!(
                    "plugins.allowed_hosts: {bad:?} is not a host name"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in file.templates.iter().enumerate() {
            let Some(name) = &t.name else {
                return Err(ConfigError::Invalid(format!(
                    "templates[{i}]: a template in the configuration needs a name"
                )));
            };
            let bad = |m: String| ConfigError::Invalid(format!("templates[{i}] ({name}): {m}"));
            validate_template_name(name).map_err(|e| bad(e.message))?;
            if !names.insert(name.clone()) {
                return Err(bad("this name appears twice".into()));
            }
            t.to_template(name).map_err(|e| bad(e.message))?;
            t.seed_pin()
                .map_err(|e| bad(format!("pin: {}", e.message)))?;
        }
        Ok(Config {
            listen,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            database_url: args.database_url.clone().or(file.database_url),
            docker_host: args.docker_host.clone().or(file.docker_host),
            owner,
            network,
            api_token,
            redis_url: args.redis_url.clone().or(file.redis_url),
            reconcile_interval: duration(
                "reconcile_interval",
                args.reconcile_interval
                    .as_deref()
                    .or(file.reconcile_interval.as_deref()),
                Duration::from_secs(30),
            )?,
            adoption_grace: duration(
                "adoption_grace",
                args.adoption_grace
                    .as_deref()
                    .or(file.adoption_grace.as_deref()),
                Duration::from_secs(30),
            )?,
            job_claim_idle: duration(
                "job_claim_idle",
                args.job_claim_idle
                    .as_deref()
                    .or(file.job_claim_idle.as_deref()),
                Duration::from_secs(30),
            )?,
            operation_timeout: duration(
                "operation_timeout",
                args.operation_timeout
                    .as_deref()
                    .or(file.operation_timeout.as_deref()),
                Duration::from_secs(300),
            )?,
            shutdown_timeout: duration(
                "shutdown_timeout",
                args.shutdown_timeout
                    .as_deref()
                    .or(file.shutdown_timeout.as_deref()),
                Duration::from_secs(60),
            )?,
            image_watch_enabled: image_watch.enabled,
            image_watch_interval: duration(
                "image_watch.interval",
                image_watch.interval.as_deref(),
                Duration::from_secs(300),
            )?,
            plugin_sweep_interval: duration(
                "plugins.sweep_interval",
                plugins.sweep_interval.as_deref(),
                Duration::from_secs(3600),
            )?,
            plugin_allow_file_sources: plugins.allow_file_sources,
            plugin_allowed_hosts: plugins.allowed_hosts.clone(),
            plugin_git_timeout: duration(
                "plugins.git_timeout",
                plugins.git_timeout.as_deref(),
                Duration::from_secs(120),
            )?,
            templates: file.templates,
            registries: file.registries,
            scoped_tokens: !file.tokens.is_empty(),
            tokens,
            tls,
            webhooks,
        })
    }

    /// berth refuses to listen beyond loopback without a token.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.tokens.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without an api_token: set api_token (or BERTH_API_TOKEN) or [[tokens]], or listen on 127.0.0.1",
                self.listen
            )));
        }
        Ok(())
    }
}

/// `api_token` (named `admin`) and `[[tokens]]`, checked: names given
/// once, roles known, secrets not empty and not shared.
fn tokens(api_token: Option<&str>, entries: &[TokenEntry]) -> Result<Vec<ApiToken>, ConfigError> {
    let mut tokens = Vec::new();
    if let Some(secret) = api_token {
        tokens.push(ApiToken::from_secret(
            API_TOKEN_NAME,
            Role::Admin,
            secret.trim(),
        ));
    }
    for (i, entry) in entries.iter().enumerate() {
        let at = |key: &str| match &entry.name {
            Some(name) => format!("tokens[{i}] ({name}).{key}"),
            None => format!("tokens[{i}].{key}"),
        };
        let bad = |key: &str, m: &str| ConfigError::Invalid(format!("{}: {m}", at(key)));
        let name = entry
            .name
            .as_deref()
            .ok_or_else(|| bad("name", "a token needs a name (the actor in the log)"))?;
        if name.trim() != name
            || name.is_empty()
            || name.len() > 128
            || name.chars().any(char::is_control)
        {
            return Err(bad(
                "name",
                "write 1 to 128 characters, without control characters or surrounding spaces",
            ));
        }
        if tokens.iter().any(|t: &ApiToken| t.name == name) {
            let m = if name == API_TOKEN_NAME && api_token.is_some() {
                "this name is api_token's; choose another".to_string()
            } else {
                "this name appears twice".to_string()
            };
            return Err(bad("name", &m));
        }
        let role_text = entry
            .role
            .as_deref()
            .ok_or_else(|| bad("role", "a token needs a role: viewer, operator or admin"))?;
        let role = Role::parse(role_text).ok_or_else(|| {
            bad(
                "role",
                &format!("{role_text:?} is not a role; write viewer, operator or admin"),
            )
        })?;
        let digest = match (&entry.token, &entry.token_sha256) {
            (Some(secret), None) => {
                if secret.trim().is_empty() {
                    return Err(bad("token", "the token must not be empty"));
                }
                sha256(secret.trim().as_bytes())
            }
            (None, Some(hex)) => parse_hex_sha256(hex).ok_or_else(|| {
                bad(
                    "token_sha256",
                    "write the SHA-256 of the token as 64 hex digits (e.g. `printf %s TOKEN | sha256sum`)",
                )
            })?,
            (Some(_), Some(_)) => {
                return Err(bad("token", "give token or token_sha256, not both"))
            }
            (None, None) => {
                return Err(bad(
                    "token",
                    "a token needs its secret: token, or token_sha256 (its hex SHA-256)",
                ))
            }
        };
        if let Some(other) = tokens.iter().find(|t| t.sha256 == digest) {
            return Err(bad(
                "token",
                &format!(
                    "the same secret as {:?}; each token needs its own",
                    other.name
                ),
            ));
        }
        tokens.push(ApiToken {
            name: name.to_string(),
            role,
            sha256: digest,
        });
    }
    Ok(tokens)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_file(&text, &path.display().to_string())
}

fn parse_file(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// The longest webhook name.
const WEBHOOK_NAME_MAX: usize = 64;

fn valid_webhook_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= WEBHOOK_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A name for a webhook without one: its URL's host, port and path in
/// lowercase letters, digits and `-` (`https://hooks.example/a/b` →
/// `hooks-example-a-b`).
pub fn webhook_name_from_url(url: &reqwest::Url) -> String {
    let mut raw = url.host_str().unwrap_or("").to_string();
    if let Some(port) = url.port() {
        raw.push_str(&format!("-{port}"));
    }
    raw.push_str(url.path());
    let mut name = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-');
    name.chars()
        .take(WEBHOOK_NAME_MAX)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn webhooks(entries: &[WebhookEntry]) -> Result<Vec<WebhookSpec>, ConfigError> {
    let mut specs: Vec<WebhookSpec> = Vec::new();
    for (i, w) in entries.iter().enumerate() {
        let bad = |m: String| ConfigError::Invalid(format!("webhooks[{i}]: {m}"));
        let url = reqwest::Url::parse(&w.url)
            .map_err(|e| bad(format!("url {:?} is not a URL: {e}", w.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(bad(format!(
                "url {:?} must be an http:// or https:// URL with a host",
                w.url
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "url must not carry credentials; the receiver checks X-Berth-Signature".into(),
            ));
        }
        if w.secret.is_empty() {
            return Err(bad("secret must not be empty".into()));
        }
        let types = match &w.types {
            None => Vec::new(),
            Some(types) if types.is_empty() => return Err(bad(
                "types is empty, so nothing would be delivered; leave it out to deliver every type"
                    .into(),
            )),
            Some(types) => {
                if let Some(t) = types.iter().find(|t| {
                    t.trim().is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control())
                }) {
                    return Err(bad(format!("types: {t:?} is not a notification type")));
                }
                types.clone()
            }
        };
        let name = match &w.name {
            Some(name) => {
                if !valid_webhook_name(name) {
                    return Err(bad(format!(
                        "name {name:?}: use 1 to {WEBHOOK_NAME_MAX} lowercase letters, digits, '-', '_' or '.'"
                    )));
                }
                name.clone()
            }
            None => {
                let name = webhook_name_from_url(&url);
                if !valid_webhook_name(&name) {
                    return Err(bad(
                        "cannot derive a name from the url; give the webhook a name".into(),
                    ));
                }
                name
            }
        };
        if specs.iter().any(|s| s.name == name) {
            return Err(bad(format!(
                "the name {name:?} is taken by another webhook; give each webhook its own name"
            )));
        }
        specs.push(WebhookSpec {
            name,
            url: url.to_string(),
            secret: w.secret.clone(),
            types,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults() {
        let c = Config::from_toml(&ServeArgs::default(), "", "berth.toml").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.owner, "berth");
        assert_eq!(c.reconcile_interval, Duration::from_secs(30));
        c.check_exposure().unwrap();
    }

    #[test]
    fn flags_override_file_and_templates_parse() {
        let text = format!(
            "listen = \"127.0.0.1:9000\"\nowner = \"fileowner\"\n\n[[templates]]\nname = \"engine\"\nimage = \"r.example/e\"\npin = \"{D}\"\n"
        );
        let args = ServeArgs {
            owner: Some("flagowner".into()),
            ..Default::default()
        };
        let c = Config::from_toml(&args, &text, "berth.toml").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.owner, "flagowner");
        assert_eq!(c.templates.len(), 1);
        assert_eq!(c.templates[0].seed_pin().unwrap().unwrap().as_str(), D);
    }

    #[test]
    fn bad_files_say_where() {
        let err = Config::from_toml(
            &ServeArgs::default(),
            "listen = \"x\"\nbogus = 1\n",
            "berth.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
        let err = Config::from_toml(
            &ServeArgs::default(),
            "[[templates]]\nname = \"t\"\nimage = \"Bad Image\"\n",
            "berth.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("templates[0] (t)"), "{err}");
        let err = Config::from_toml(
            &ServeArgs::default(),
            "reconcile_interval = \"soon\"\n",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("reconcile_interval:"), "{err}");
    }

    #[test]
    fn refuses_public_listen_without_token() {
        let c =
            Config::from_toml(&ServeArgs::default(), "listen = \"0.0.0.0:7878\"\n", "f").unwrap();
        assert!(c
            .check_exposure()
            .unwrap_err()
            .to_string()
            .contains("api_token"));
        let c = Config::from_toml(
            &ServeArgs::default(),
            "listen = \"0.0.0.0:7878\"\napi_token = \"s3cret\"\n",
            "f",
        )
        .unwrap();
        c.check_exposure().unwrap();
    }

    fn config_err(text: &str) -> String {
        Config::from_toml(&ServeArgs::default(), text, "f")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn tokens_parse_with_plain_or_hashed_secrets() {
        let hashed = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // "password"
        let c = Config::from_toml(
            &ServeArgs::default(),
            &format!(
                "listen = \"0.0.0.0:7878\"\napi_token = \"root-secret\"\n\n[[tokens]]\nname = \"ci\"\nrole = \"operator\"\ntoken = \"ci-secret\"\n\n[[tokens]]\nname = \"grafana\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
                hashed.to_uppercase()
            ),
            "f",
        )
        .unwrap();
        c.check_exposure().unwrap();
        assert!(c.scoped_tokens);
        let names: Vec<_> = c.tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
        assert_eq!(
            names,
            [
                ("admin", Role::Admin),
                ("ci", Role::Operator),
                ("grafana", Role::Viewer)
            ]
        );
        assert_eq!(c.tokens[1].sha256, sha256(b"ci-secret"));
        assert_eq!(c.tokens[2].sha256, sha256(b"password"));
        // The digest stays out of debug output.
        assert!(!format!("{:?}", c.tokens[1]).contains("sha256"));
    }

    #[test]
    fn tokens_alone_allow_a_public_listen() {
        let c = Config::from_toml(
            &ServeArgs::default(),
            "listen = \"0.0.0.0:7878\"\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = \"t\"\n",
            "f",
        )
        .unwrap();
        c.check_exposure().unwrap();
        let c = Config::from_toml(&ServeArgs::default(), "", "f").unwrap();
        assert!(c.tokens.is_empty() && !c.scoped_tokens);
        let c = Config::from_toml(&ServeArgs::default(), "api_token = \"x\"\n", "f").unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert!(!c.scoped_tokens);
    }

    #[test]
    fn bad_tokens_name_the_key_at_fault() {
        let t = |body: &str| config_err(&format!("[[tokens]]\n{body}"));
        let err = t("role = \"viewer\"\ntoken = \"a\"\n");
        assert!(err.starts_with("tokens[0].name:"), "{err}");
        let err = t("name = \"x\"\nrole = \"root\"\ntoken = \"a\"\n");
        assert!(
            err.starts_with("tokens[0] (x).role:") && err.contains("\"root\" is not a role"),
            "{err}"
        );
        let err = t("name = \"x\"\ntoken = \"a\"\n");
        assert!(err.starts_with("tokens[0] (x).role:"), "{err}");
        let err = t("name = \"x\"\nrole = \"viewer\"\ntoken = \"  \"\n");
        assert!(
            err.starts_with("tokens[0] (x).token:") && err.contains("empty"),
            "{err}"
        );
        let err = t("name = \"x\"\nrole = \"viewer\"\n");
        assert!(err.starts_with("tokens[0] (x).token:"), "{err}");
        let err = t("name = \"x\"\nrole = \"viewer\"\ntoken = \"a\"\ntoken_sha256 = \"b\"\n");
        assert!(err.contains("not both"), "{err}");
        let err = t("name = \"x\"\nrole = \"viewer\"\ntoken_sha256 = \"abc\"\n");
        assert!(err.starts_with("tokens[0] (x).token_sha256:"), "{err}");
        let err = t("name = \"\"\nrole = \"viewer\"\ntoken = \"a\"\n");
        assert!(err.starts_with("tokens[0] ().name:"), "{err}");
        let err = t("name = \"x\"\nrole = \"viewer\"\ntoken = \"a\"\nextra = 1\n");
        assert!(err.contains("extra"), "{err}");

        let two = "[[tokens]]\nname = \"x\"\nrole = \"viewer\"\ntoken = \"a\"\n[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"b\"\n";
        let err = config_err(two);
        assert!(
            err.starts_with("tokens[1] (x).name:") && err.contains("twice"),
            "{err}"
        );
        let err = config_err(
            "api_token = \"s\"\n[[tokens]]\nname = \"admin\"\nrole = \"viewer\"\ntoken = \"a\"\n",
        );
        assert!(
            err.starts_with("tokens[0] (admin).name:") && err.contains("api_token"),
            "{err}"
        );
        let err = config_err(
            "api_token = \"s\"\n[[tokens]]\nname = \"y\"\nrole = \"viewer\"\ntoken = \"s\"\n",
        );
        assert!(
            err.starts_with("tokens[0] (y).token:") && err.contains("same secret"),
            "{err}"
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let c = Config::from_toml(
            &ServeArgs::default(),
            "tls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            })
        );
        assert!(config_err("tls_cert = \"/c\"\n").starts_with("tls_key:"));
        assert!(config_err("tls_key = \"/k\"\n").starts_with("tls_cert:"));
        // Flags fill in what the file lacks.
        let args = ServeArgs {
            tls_key: Some("/flag/k.pem".into()),
            ..Default::default()
        };
        let c = Config::from_toml(&args, "tls_cert = \"/c\"\n", "f").unwrap();
        assert_eq!(c.tls.unwrap().key, PathBuf::from("/flag/k.pem"));
    }

    #[test]
    fn webhooks_parse_with_defaults_and_validation() {
        let c = Config::from_toml(
            &ServeArgs::default(),
            "[[webhooks]]\nurl = \"https://Hooks.Example:8443/berth/in\"\nsecret = \"s\"\n\n\
             [[webhooks]]\nname = \"chat\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"t\"\n\
             types = [\"runtime.start_failed\"]\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[0].name, "hooks-example-8443-berth-in");
        assert_eq!(c.webhooks[0].url, "https://hooks.example:8443/berth/in");
        assert!(c.webhooks[0].types.is_empty());
        assert_eq!(c.webhooks[1].name, "chat");
        assert_eq!(c.webhooks[1].types, vec!["runtime.start_failed"]);

        let err = |text: &str| {
            Config::from_toml(&ServeArgs::default(), text, "f")
                .unwrap_err()
                .to_string()
        };
        let e = err("[[webhooks]]\nurl = \"ftp://x/\"\nsecret = \"s\"\n");
        assert!(e.contains("webhooks[0]") && e.contains("http"), "{e}");
        let e = err("[[webhooks]]\nurl = \"not a url\"\nsecret = \"s\"\n");
        assert!(e.contains("not a URL"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"\"\n");
        assert!(e.contains("secret"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\ntypes = [\"\"]\n");
        assert!(e.contains("types"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\ntypes = []\n");
        assert!(e.contains("types is empty"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://x/a\"\nsecret = \"s\"\n\
             [[webhooks]]\nurl = \"http://x/a\"\nsecret = \"s\"\n");
        assert!(e.contains("webhooks[1]") && e.contains("taken"), "{e}");
        let e = err("[[webhooks]]\nname = \"Bad Name\"\nurl = \"http://x/\"\nsecret = \"s\"\n");
        assert!(e.contains("name"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nbogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
    }
}
