//! `berth template …`: create or replace, list, show and remove templates.

use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::http::dto::TemplateList;
use crate::template_doc::TemplateDoc;

use super::client::CliError;
use super::format::{or_dash, Fields, Table};
use super::{emit, emit_json, parse_env, parse_path_segment, show, Ctx, Output};

#[derive(Debug, clap::Subcommand)]
pub enum TemplateCommand {
    /// Create or replace a template
    Put(TemplatePutArgs),
    /// List templates
    #[command(visible_alias = "list")]
    Ls,
    /// Show one template
    Show {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        name: String,
    },
    /// Remove a template (refused while runtimes use it)
    #[command(visible_alias = "remove")]
    Rm {
        /// Template name
        #[arg(value_parser = parse_path_segment)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "image"])))]
pub struct TemplatePutArgs {
    /// Template name
    #[arg(value_parser = parse_path_segment)]
    pub name: String,
    /// The whole template as JSON, as the API takes it; `-` reads standard input
    #[arg(long, short = 'f', value_name = "FILE.json|-")]
    pub file: Option<PathBuf>,
    /// Image repository without tag, e.g. registry.example/acme/engine
    #[arg(long)]
    pub image: Option<String>,
    /// Tracked tag [server default: latest]
    #[arg(long, conflicts_with = "file")]
    pub tag: Option<String>,
    /// Port the runtime serves on inside the container
    #[arg(long, conflicts_with = "file")]
    pub port: Option<u16>,
    /// Environment variable of every runtime (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, conflicts_with = "file")]
    pub env: Vec<(String, String)>,
    /// Where the state directory is mounted [server default: /var/lib/runtime]
    #[arg(long, conflicts_with = "file")]
    pub state_path: Option<String>,
    /// Refuse to start runtimes until a digest is pinned
    #[arg(long, conflicts_with = "file")]
    pub require_pin: bool,
}

pub(super) async fn template(ctx: &Ctx, command: TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::Put(args) => {
            let body = template_body(&args)?;
            let answer = ctx
                .client
                .put(&["v1", "templates", &args.name], &body)
                .await?;
            let verb = if answer.status == StatusCode::CREATED {
                "created"
            } else {
                "replaced"
            };
            show(ctx, &answer, |doc: TemplateDoc| {
                format!(
                    "template {} {verb}\n{}",
                    args.name,
                    template_fields(&args.name, &doc)
                )
            })
        }
        TemplateCommand::Ls => {
            let answer = ctx.client.get(&["v1", "templates"], &[]).await?;
            show(ctx, &answer, |list: TemplateList| template_table(&list))
        }
        TemplateCommand::Show { name } => {
            let answer = ctx.client.get(&["v1", "templates", &name], &[]).await?;
            show(ctx, &answer, |doc: TemplateDoc| {
                template_fields(&name, &doc)
            })
        }
        TemplateCommand::Rm { name } => {
            let answer = ctx.client.delete(&["v1", "templates", &name], &[]).await?;
            match ctx.output {
                Output::Json => emit_json(&answer),
                Output::Table => emit(&format!("removed template {name}\n")),
            }
            Ok(())
        }
    }
}

/// The document to PUT: a file as written (the server judges it), or one
/// built from flags.
fn template_body(args: &TemplatePutArgs) -> Result<serde_json::Value, CliError> {
    match (&args.file, &args.image) {
        (Some(path), _) => {
            let (label, text) = read_input(path)?;
            serde_json::from_str(&text)
                .map_err(|e| CliError::Other(format!("{label} is not valid JSON: {e}")))
        }
        (None, Some(image)) => {
            let doc = TemplateDoc {
                image: image.clone(),
                tag: args.tag.clone(),
                port: args.port,
                env: args.env.iter().cloned().collect(),
                state_path: args.state_path.clone(),
                require_pin: args.require_pin,
                ..TemplateDoc::default()
            };
            serde_json::to_value(&doc)
                .map_err(|e| CliError::Other(format!("cannot encode the template: {e}")))
        }
        // clap's group makes one of them required.
        (None, None) => Err(CliError::Other("give --file or --image".to_string())),
    }
}

fn read_input(path: &Path) -> Result<(String, String), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Other(format!("cannot read standard input: {e}")))?;
        return Ok(("standard input".to_string(), text));
    }
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("cannot read {label}: {e}")))?;
    Ok((label, text))
}

fn template_table(list: &TemplateList) -> String {
    let mut t = Table::new(&[
        "NAME",
        "IMAGE",
        "TAG",
        "PORT",
        "REQUIRE_PIN",
        "WATCH",
        "UPDATE_POLICY",
    ]);
    for doc in &list.templates {
        t.row([
            or_dash(doc.name.as_deref()),
            doc.image.clone(),
            or_dash(doc.tag.as_deref()),
            doc.port.map_or_else(|| "-".to_string(), |p| p.to_string()),
            doc.require_pin.to_string(),
            doc.watch.to_string(),
            doc.update_policy
                .map_or_else(|| "-".to_string(), |p| enum_text(&p)),
        ]);
    }
    t.render()
}

fn template_fields(name: &str, doc: &TemplateDoc) -> String {
    let mut f = Fields::new();
    f.add("name", doc.name.as_deref().unwrap_or(name))
        .add("image", &doc.image)
        .add("tag", or_dash(doc.tag.as_deref()))
        .add(
            "port",
            doc.port.map_or_else(|| "-".to_string(), |p| p.to_string()),
        )
        .add("state_path", or_dash(doc.state_path.as_deref()));
    match &doc.health {
        Some(h) => f.add(
            "health",
            format!(
                "GET {} every {}, timeout {}, grace {}",
                h.path,
                or_dash(h.interval.as_deref()),
                or_dash(h.timeout.as_deref()),
                or_dash(h.grace.as_deref())
            ),
        ),
        None => f.add("health", "-"),
    };
    f.add("require_pin", doc.require_pin.to_string())
        .add("watch", doc.watch.to_string())
        .add(
            "update_policy",
            doc.update_policy
                .map_or_else(|| "-".to_string(), |p| enum_text(&p)),
        );
    match &doc.rollout {
        Some(r) => f.add(
            "rollout",
            format!(
                "batch_size {}, max_failures {}",
                r.batch_size, r.max_failures
            ),
        ),
        None => f.add("rollout", "-"),
    };
    f.add(
        "restart",
        doc.restart
            .map_or_else(|| "-".to_string(), |r| enum_text(&r)),
    )
    .add(
        "on_disappear",
        doc.on_disappear
            .map_or_else(|| "-".to_string(), |d| enum_text(&d)),
    )
    .add("stop_grace", or_dash(doc.stop_grace.as_deref()));
    for (key, value) in &doc.env {
        f.add(&format!("env.{key}"), value);
    }
    f.render()
}

/// The wire spelling of a template enum (`on-failure`, `track`, …).
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_template_fields_with_wire_spellings() {
        let doc: TemplateDoc = serde_json::from_str(
            r#"{"name":"engine","image":"r.example/acme/engine","tag":"v1","env":{"K":"v"},
                "restart":"on-failure","update_policy":"track"}"#,
        )
        .unwrap();
        let text = template_fields("engine", &doc);
        assert!(text.contains("\nrestart: on-failure\n"), "{text}");
        assert!(text.contains("\nupdate_policy: track\n"), "{text}");
        assert!(text.contains("\nport: -\n"), "{text}");
        assert!(text.ends_with("\nenv.K: v\n"), "{text}");
    }

    #[test]
    fn builds_a_template_document_from_flags() {
        let args = TemplatePutArgs {
            name: "engine".into(),
            file: None,
            image: Some("r.example/acme/engine".into()),
            tag: None,
            port: Some(8080),
            env: vec![("A".into(), "1".into())],
            state_path: None,
            require_pin: true,
        };
        let body = template_body(&args).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"image":"r.example/acme/engine","port":8080,"env":{"A":"1"},
                               "require_pin":true,"watch":false})
        );
    }

    #[test]
    fn reads_a_template_file_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"image":"x","future_field":1}"#).unwrap();
        let mut args = TemplatePutArgs {
            name: "t".into(),
            file: Some(path.clone()),
            image: None,
            tag: None,
            port: None,
            env: Vec::new(),
            state_path: None,
            require_pin: false,
        };
        assert_eq!(
            template_body(&args).unwrap(),
            serde_json::json!({"image":"x","future_field":1})
        );
        std::fs::write(&path, "{not json").unwrap();
        let err = template_body(&args).unwrap_err().to_string();
        assert!(err.contains("is not valid JSON"), "{err}");
        args.file = Some(dir.path().join("missing.json"));
        assert!(template_body(&args)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read "));
    }
}
