//! Command-line parsing of `berth`: which command lines are accepted, what
//! they parse to, and which are refused (exit code 2, as clap does).

use std::time::Duration;

use berth::cli::{
    Cli, Command, OpsArgs, Output, PinCommand, RefreshArgs, RolloutCommand, RuntimeCommand,
    TemplateCommand, DEFAULT_API_URL,
};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

fn parse(args: &[&str]) -> Cli {
    match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => panic!("{args:?} was refused:\n{e}"),
    }
}

fn refuse(args: &[&str]) -> clap::Error {
    match Cli::try_parse_from(args) {
        Ok(cli) => panic!("{args:?} was accepted as {cli:?}"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            e
        }
    }
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn runtime_start_takes_a_template_and_env() {
    let cli = parse(&[
        "berth",
        "runtime",
        "start",
        "ws-1",
        "--template",
        "engine",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
    ]);
    match cli.command {
        Command::Runtime(RuntimeCommand::Start { id, template, env }) => {
            assert_eq!(id, "ws-1");
            assert_eq!(template, "engine");
            assert_eq!(
                env,
                vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cli.output, Output::Table);
}

#[test]
fn runtime_start_without_template_is_refused() {
    let e = refuse(&["berth", "runtime", "start", "ws-1"]);
    assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn env_without_equals_is_refused() {
    let e = refuse(&[
        "berth",
        "runtime",
        "start",
        "ws-1",
        "--template",
        "engine",
        "--env",
        "A",
    ]);
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    refuse(&[
        "berth",
        "runtime",
        "start",
        "ws-1",
        "--template",
        "engine",
        "--env",
        "=1",
    ]);
}

#[test]
fn global_options_go_before_or_after_the_subcommand() {
    let cli = parse(&["berth", "--output", "json", "runtime", "ls", "--stale"]);
    assert_eq!(cli.output, Output::Json);
    match cli.command {
        Command::Runtime(RuntimeCommand::Ls {
            template,
            status,
            stale,
        }) => {
            assert!(stale);
            assert_eq!(template, None);
            assert_eq!(status, None);
        }
        other => panic!("{other:?}"),
    }
    let cli = parse(&[
        "berth",
        "runtime",
        "ls",
        "--status",
        "running",
        "--output",
        "json",
        "--api-url",
        "http://10.0.0.5:7878/",
        "--token",
        "s3cret",
    ]);
    assert_eq!(cli.output, Output::Json);
    assert_eq!(cli.api_url, "http://10.0.0.5:7878");
    assert_eq!(cli.token.as_deref(), Some("s3cret"));
}

#[test]
fn api_url_defaults_to_loopback() {
    // Only meaningful when the environment does not set it.
    if std::env::var_os("BERTH_API_URL").is_none() {
        assert_eq!(parse(&["berth", "runtime", "ls"]).api_url, DEFAULT_API_URL);
    }
}

#[test]
fn bad_option_values_are_refused() {
    refuse(&["berth", "--output", "yaml", "runtime", "ls"]);
    refuse(&["berth", "runtime", "ls", "--status", "sleeping"]);
    refuse(&["berth", "--api-url", "ftp://berth.example", "runtime", "ls"]);
    refuse(&["berth", "--api-url", "not a url", "runtime", "ls"]);
    refuse(&["berth", "ops", "--limit", "0"]);
    refuse(&["berth", "ops", "--limit", "1001"]);
    refuse(&["berth", "ops", "--kind", "dance"]);
    refuse(&["berth", "runtime", "show", ".."]);
    refuse(&["berth", "runtime", "show", ""]);
    refuse(&["berth", "runtime", "frobnicate", "ws-1"]);
    refuse(&["berth", "runtime", "show"]);
}

#[test]
fn template_put_takes_a_file_or_flags() {
    match parse(&["berth", "template", "put", "engine", "--file", "-"]).command {
        Command::Template(TemplateCommand::Put(args)) => {
            assert_eq!(args.name, "engine");
            assert_eq!(args.file.as_deref(), Some(std::path::Path::new("-")));
            assert!(!args.require_pin);
        }
        other => panic!("{other:?}"),
    }
    let cli = parse(&[
        "berth",
        "template",
        "put",
        "engine",
        "--image",
        "registry.example/acme/engine",
        "--tag",
        "v2",
        "--port",
        "8080",
        "--env",
        "MODE=prod",
        "--state-path",
        "/data",
        "--require-pin",
    ]);
    match cli.command {
        Command::Template(TemplateCommand::Put(args)) => {
            assert_eq!(args.image.as_deref(), Some("registry.example/acme/engine"));
            assert_eq!(args.tag.as_deref(), Some("v2"));
            assert_eq!(args.port, Some(8080));
            assert_eq!(args.env, vec![("MODE".into(), "prod".into())]);
            assert_eq!(args.state_path.as_deref(), Some("/data"));
            assert!(args.require_pin);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn template_put_needs_exactly_one_source() {
    refuse(&["berth", "template", "put", "engine"]);
    refuse(&[
        "berth", "template", "put", "engine", "--file", "t.json", "--image", "x",
    ]);
    // Flags that build a document make no sense with a file.
    refuse(&[
        "berth", "template", "put", "engine", "--file", "t.json", "--tag", "v1",
    ]);
    refuse(&[
        "berth",
        "template",
        "put",
        "engine",
        "--file",
        "t.json",
        "--require-pin",
    ]);
    refuse(&[
        "berth", "template", "put", "engine", "--image", "x", "--port", "99999",
    ]);
}

#[test]
fn template_ls_show_rm() {
    assert!(matches!(
        parse(&["berth", "template", "ls"]).command,
        Command::Template(TemplateCommand::Ls)
    ));
    assert!(matches!(
        parse(&["berth", "template", "show", "engine"]).command,
        Command::Template(TemplateCommand::Show { name }) if name == "engine"
    ));
    assert!(matches!(
        parse(&["berth", "template", "rm", "engine"]).command,
        Command::Template(TemplateCommand::Rm { name }) if name == "engine"
    ));
}

#[test]
fn pin_commands() {
    let digest = format!("sha256:{}", "a".repeat(64));
    match parse(&[
        "berth",
        "pin",
        "promote",
        "engine",
        &digest,
        "--reason",
        "tested in staging",
    ])
    .command
    {
        Command::Pin(PinCommand::Promote {
            template,
            digest: d,
            reason,
        }) => {
            assert_eq!(template, "engine");
            assert_eq!(d, digest);
            assert_eq!(reason.as_deref(), Some("tested in staging"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["berth", "pin", "history", "engine", "--limit", "5"]).command,
        Command::Pin(PinCommand::History { limit: Some(5), .. })
    ));
    assert!(matches!(
        parse(&["berth", "pin", "rm", "engine"]).command,
        Command::Pin(PinCommand::Rm { reason: None, .. })
    ));
    assert!(matches!(
        parse(&["berth", "pin", "show", "engine"]).command,
        Command::Pin(PinCommand::Show { .. })
    ));
    refuse(&["berth", "pin", "promote", "engine"]);
}

#[test]
fn runtime_lifecycle_commands() {
    for verb in ["show", "stop", "restart", "rm"] {
        let cli = parse(&["berth", "runtime", verb, "ws-1"]);
        let id = match cli.command {
            Command::Runtime(
                RuntimeCommand::Show { id }
                | RuntimeCommand::Stop { id }
                | RuntimeCommand::Restart { id }
                | RuntimeCommand::Rm { id },
            ) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id, "ws-1");
    }
}

#[test]
fn ops_filters() {
    match parse(&[
        "berth",
        "ops",
        "--runtime",
        "ws-1",
        "--kind",
        "start",
        "--limit",
        "20",
    ])
    .command
    {
        Command::Ops(OpsArgs {
            runtime,
            kind,
            limit,
        }) => {
            assert_eq!(runtime.as_deref(), Some("ws-1"));
            assert_eq!(kind.as_deref(), Some("start"));
            assert_eq!(limit, Some(20));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["berth", "ops"]).command,
        Command::Ops(OpsArgs {
            runtime: None,
            kind: None,
            limit: None
        })
    ));
}

#[test]
fn refresh_takes_templates_and_recreate() {
    match parse(&["berth", "refresh"]).command {
        Command::Refresh(RefreshArgs {
            templates,
            recreate,
        }) => {
            assert!(templates.is_empty());
            assert!(!recreate);
        }
        other => panic!("{other:?}"),
    }
    match parse(&[
        "berth",
        "refresh",
        "--template",
        "engine",
        "--template",
        "db",
        "--recreate",
    ])
    .command
    {
        Command::Refresh(RefreshArgs {
            templates,
            recreate,
        }) => {
            assert_eq!(templates, vec!["engine".to_string(), "db".to_string()]);
            assert!(recreate);
        }
        other => panic!("{other:?}"),
    }
    refuse(&["berth", "refresh", "engine"]);
    refuse(&["berth", "refresh", "--template"]);
    refuse(&["berth", "refresh", "--template", ""]);
    refuse(&["berth", "refresh", "--recreate=yes"]);
}

#[test]
fn watch_takes_no_arguments() {
    assert!(matches!(parse(&["berth", "watch"]).command, Command::Watch));
    assert_eq!(
        parse(&["berth", "--output", "json", "watch"]).output,
        Output::Json
    );
    refuse(&["berth", "watch", "engine"]);
}

#[test]
fn rollout_ls_filters() {
    match parse(&[
        "berth",
        "rollout",
        "ls",
        "--template",
        "engine",
        "--limit",
        "5",
    ])
    .command
    {
        Command::Rollout(RolloutCommand::Ls { template, limit }) => {
            assert_eq!(template.as_deref(), Some("engine"));
            assert_eq!(limit, Some(5));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["berth", "rollout", "list"]).command,
        Command::Rollout(RolloutCommand::Ls {
            template: None,
            limit: None
        })
    ));
    refuse(&["berth", "rollout", "ls", "--limit", "0"]);
    refuse(&["berth", "rollout", "ls", "--limit", "1001"]);
    refuse(&["berth", "rollout"]);
}

#[test]
fn rollout_commands_take_an_id() {
    let id = "01890a5d-ac96-774b-bcce-b302099a8057";
    for verb in ["show", "pause", "resume", "abort"] {
        let got = match parse(&["berth", "rollout", verb, id]).command {
            Command::Rollout(
                RolloutCommand::Show { id }
                | RolloutCommand::Pause { id }
                | RolloutCommand::Resume { id }
                | RolloutCommand::Abort { id },
            ) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(got, id);
        let e = refuse(&["berth", "rollout", verb]);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        refuse(&["berth", "rollout", verb, ".."]);
    }
    refuse(&["berth", "rollout", "restart", id]);
}

#[test]
fn rollout_watch_takes_an_interval() {
    match parse(&["berth", "rollout", "watch", "r-1"]).command {
        Command::Rollout(RolloutCommand::Watch { id, interval }) => {
            assert_eq!(id, "r-1");
            assert_eq!(interval, Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    for (text, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("1m", Duration::from_secs(60)),
        ("100ms", Duration::from_millis(100)),
    ] {
        match parse(&["berth", "rollout", "watch", "r-1", "--interval", text]).command {
            Command::Rollout(RolloutCommand::Watch { interval, .. }) => {
                assert_eq!(interval, expected, "{text}")
            }
            other => panic!("{other:?}"),
        }
    }
    for bad in ["0s", "50ms", "2m", "1", "s", "1.5s", "fast", ""] {
        let e = refuse(&["berth", "rollout", "watch", "r-1", "--interval", bad]);
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad}: {e}");
    }
    refuse(&["berth", "rollout", "watch"]);
}

#[test]
fn serve_keeps_its_own_flags() {
    match parse(&[
        "berth",
        "serve",
        "--config",
        "berth.toml",
        "--listen",
        "127.0.0.1:9999",
    ])
    .command
    {
        Command::Serve(args) => {
            assert_eq!(
                args.config.as_deref(),
                Some(std::path::Path::new("berth.toml"))
            );
            assert_eq!(args.listen.as_deref(), Some("127.0.0.1:9999"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn help_and_version_are_not_errors_of_input() {
    let e = Cli::try_parse_from(["berth", "--help"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DisplayHelp);
    assert_eq!(e.exit_code(), 0);
    let e = Cli::try_parse_from(["berth", "--version"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DisplayVersion);
}
