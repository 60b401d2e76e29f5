//! Configuration: `berth.toml`, overridden by `BERTH_*` environment
//! variables, overridden by flags. Durations are strings (`"30s"`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::duration::parse_duration;
use berth_core::id::{validate_owner, validate_template_name};
use serde::Deserialize;

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
        let webhooks = webhooks(&file.webhooks)?;
        Ok(Config {
            webhooks,
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
        })
    }

    /// berth refuses to listen beyond loopback without a token.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.api_token.is_none() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without an api_token: set api_token (or BERTH_API_TOKEN), or listen on 127.0.0.1",
                self.listen
            )));
        }
        Ok(())
    }
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
}
