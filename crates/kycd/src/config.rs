//! Configuration layering: compiled-in defaults, then an optional TOML file
//! (`--config`, or `KYCD_CONFIG`), then `KYCD_*` environment variables, then
//! flags. Unknown keys in the file are an error; unknown `KYCD_*` variables
//! are warnings.
//!
//! Every setting is declared once, in `kycd_server::settings` (read its
//! module doc to add one); this module only walks that table. From it come
//! the flags of `serve` and the commands that share them ([`ServeArgs`]),
//! `config check` ([`render_check`]: the effective configuration as TOML,
//! with where each value came from), `config default` ([`render_default`],
//! checked in as `config/default.toml`) and `config docs` ([`render_docs`],
//! checked in as `docs/settings.md`). Secrets are held in `Secret`, whose
//! `Debug` redacts them, and only ever printed as `<hidden>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use kycd_server::settings::{setting, Setting, SETTINGS};
use kycd_server::Settings;

/// The variable naming the configuration file.
const CONFIG_ENV: &str = "KYCD_CONFIG";

/// Flags shared by `serve`, `config check` and the commands that open a
/// data directory: `--config FILE` and one flag for each setting that
/// declares one.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// A TOML configuration file.
    pub config: Option<PathBuf>,
    /// Settings given as flags, by file key, as typed.
    pub flags: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for s in SETTINGS.iter().filter(|s| s.meta.flag.is_some()) {
            let given = match s.meta.value_name {
                Some(_) => matches.get_one::<String>(s.key).cloned(),
                None => matches.get_flag(s.key).then(|| "true".to_owned()),
            };
            if let Some(text) = given {
                self.flags.retain(|(k, _)| *k != s.key);
                self.flags.push((s.key, text));
            }
        }
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "A TOML configuration file (see config/default.toml) [env: {CONFIG_ENV}]"
                )),
        );
        for s in SETTINGS {
            let Some(flag) = s.meta.flag else { continue };
            let tail = format!("[env: {}] [default: {}]", s.meta.env, default_text(s));
            let arg = clap::Arg::new(s.key)
                .long(flag)
                .help(format!("{} {tail}", s.summary()))
                .long_help(format!("{}\n\n{tail}", s.help()));
            cmd = cmd.arg(match s.meta.value_name {
                Some(value_name) => arg.value_name(value_name),
                None => arg.action(clap::ArgAction::SetTrue),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File,
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("the file"),
            Source::Env(name) => f.write_str(name),
            Source::Flag(name) => write!(f, "--{name}"),
        }
    }
}

/// The effective settings, and warnings to log once logging is up.
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    /// By file key, the layers that set each value; absent: the default.
    pub sources: BTreeMap<&'static str, Vec<Source>>,
}

impl Loaded {
    fn set(&mut self, key: &'static str, source: Source, replace: bool) {
        let list = self.sources.entry(key).or_default();
        if replace {
            list.clear();
        }
        list.push(source);
    }
}

/// The variable (or variables, for a map) a setting is read from, as an
/// error message names it.
fn env_label(s: &Setting) -> String {
    if s.meta.entries.is_empty() {
        s.meta.env.to_owned()
    } else {
        format!("{}*", s.meta.env)
    }
}

/// `key (KYCD_KEY)`, how error messages name a setting.
fn named(key: &str) -> String {
    match setting(key) {
        Some(s) => format!("{key} ({})", env_label(s)),
        None => key.to_owned(),
    }
}

/// Every `KYCD_*` variable kycd reads: the settings', the file's, and those
/// other commands' flags read (found in the command line's definition).
pub fn known_env() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = vec![CONFIG_ENV.to_owned()];
    for s in SETTINGS {
        out.extend(s.env_names());
        out.extend(s.meta.alias.map(str::to_owned));
    }
    walk(&crate::cli(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// The prefix of the variables kycd's test suite reads, never a setting.
pub const TEST_SUITE_PREFIX: &str = "KYCD_TEST_";

/// Build the settings from every layer. `env` is passed in so tests can
/// supply their own.
pub fn load(args: &ServeArgs, env: &[(String, String)]) -> anyhow::Result<Loaded> {
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut loaded = Loaded {
        settings: Settings::default(),
        warnings: Vec::new(),
        file: None,
        sources: BTreeMap::new(),
    };
    let known = known_env();
    for (name, _) in env {
        // `KYCD_TEST_*` name the programs kycd's own test suite runs
        // (Chromium, promtool); CI exports them around every kycd it starts.
        let test_suite = name.starts_with(TEST_SUITE_PREFIX);
        if name.starts_with("KYCD_") && !test_suite && !known.contains(name) {
            loaded
                .warnings
                .push(format!("unknown environment variable {name} is ignored"));
        }
    }

    // The file.
    let path = args
        .config
        .clone()
        .or_else(|| var(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    if let Some(path) = path {
        apply_file(&mut loaded, &path)
            .with_context(|| format!("config file {}", path.display()))?;
        loaded.file = Some(path);
    }

    // The environment.
    apply_env(&mut loaded, env)?;

    // The flags.
    for (key, text) in &args.flags {
        let s = setting(key).with_context(|| format!("no setting {key}"))?;
        let flag = s.meta.flag.unwrap_or(s.key);
        if (s.set_text)(&mut loaded.settings, text)
            .map_err(|e| anyhow!("--{flag} ({}, {}): {e}", s.key, s.meta.env))?
        {
            loaded.set(s.key, Source::Flag(flag.to_owned()), true);
        }
    }

    validate(&loaded.settings)?;
    Ok(loaded)
}

/// The settings from the environment alone, unchecked: for commands that
/// have no configuration file but log like the server (`kycd sim`).
pub fn env_only(env: &[(String, String)]) -> anyhow::Result<Settings> {
    let mut loaded = Loaded {
        settings: Settings::default(),
        warnings: Vec::new(),
        file: None,
        sources: BTreeMap::new(),
    };
    apply_env(&mut loaded, env)?;
    Ok(loaded.settings)
}

fn apply_file(loaded: &mut Loaded, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).context("read it")?;
    let table: toml::Table = text.parse()?;
    for (key, value) in &table {
        let s = match setting(key) {
            Some(s) if s.meta.file => s,
            Some(s) => bail!(
                "{key} is not a file key: set {} (or its flag) for one start",
                s.meta.env
            ),
            None => bail!("{}", unknown_key(key)),
        };
        (s.set_toml)(&mut loaded.settings, value, &s.meta)
            .map_err(|e| anyhow!("{key} ({}): {e}", env_label(s)))?;
        loaded.set(s.key, Source::File, true);
    }
    Ok(())
}

fn unknown_key(key: &str) -> String {
    let closest = SETTINGS
        .iter()
        .filter(|s| s.meta.file)
        .map(|s| (edit_distance(key, s.key), s.key))
        .min();
    let hint = match closest {
        Some((d, near)) if d <= 3 => format!(" (did you mean {near}?)"),
        _ => String::new(),
    };
    format!("unknown key {key}{hint}; `kycd config default` lists every key")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn apply_env(loaded: &mut Loaded, env: &[(String, String)]) -> anyhow::Result<()> {
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    for s in SETTINGS {
        if s.meta.entries.is_empty() {
            // The alias first, so that the setting's own variable wins.
            for name in s.meta.alias.into_iter().chain([s.meta.env]) {
                let Some(text) = var(name) else { continue };
                if (s.set_text)(&mut loaded.settings, &text)
                    .map_err(|e| anyhow!("{name} ({}): {e}", s.key))?
                {
                    loaded.set(s.key, Source::Env(name.to_owned()), true);
                }
            }
        } else {
            for entry in s.meta.entries {
                let name = format!("{}{entry}", s.meta.env);
                let Some(text) = var(&name) else { continue };
                if (s.set_entry)(&mut loaded.settings, entry, &text)
                    .map_err(|e| anyhow!("{name} ({}): {e}", s.key))?
                {
                    loaded.set(s.key, Source::Env(name), false);
                }
            }
        }
    }
    Ok(())
}

/// Refuse, saying why, a command that works on the embedded SQLite files
/// when the settings put the log and store in PostgreSQL: it would read or
/// write files that no server uses. Only `backup` and `replay` are such
/// commands; `token`, `user` and `audit verify` work on either backend.
pub fn embedded_only(s: &Settings, command: &str) -> anyhow::Result<()> {
    if s.database_url.is_some() {
        bail!(
            "`kycd {command}` works on the embedded data directory only, and {} is set; \
             `kycd backup` and `kycd replay` do not read PostgreSQL (back the database up \
             with pg_dump)",
            named("database_url")
        );
    }
    Ok(())
}

/// Checks of a value's range or of settings together; each names the
/// setting and its variable.
fn validate(s: &Settings) -> anyhow::Result<()> {
    kycd_engine::actions::BlocklistItems::parse(&s.blocklist_items)
        .map_err(|e| anyhow!("{}: {e}", named("blocklist_items")))?;
    for secret in &s.operator_webhook_secrets {
        // The error never contains the secret.
        kycd_server::operator_webhook::SigningSecret::parse(secret.expose())
            .map_err(|e| anyhow!("{}: {e}", named("operator_webhook_secrets")))?;
    }
    if s.operator_webhook_url.is_some() && s.operator_webhook_secrets.is_empty() {
        bail!(
            "{} needs {} (whsec_...) to sign with",
            named("operator_webhook_url"),
            named("operator_webhook_secrets")
        );
    }
    for (key, secs) in [
        ("header_read_timeout_secs", s.header_read_timeout_secs),
        ("body_read_timeout_secs", s.body_read_timeout_secs),
        ("idle_timeout_secs", s.idle_timeout_secs),
        ("projector_stall_secs", s.projector_stall_secs),
    ] {
        if secs == 0 {
            bail!("{} must be at least 1 second", named(key));
        }
    }
    if s.max_connections == 0 {
        bail!("{} must be at least 1", named("max_connections"));
    }
    if s.database_max_connections < 2 {
        // The event log's writer holds one while the projector and the
        // API need others.
        bail!("{} must be at least 2", named("database_max_connections"));
    }
    if let Some(url) = &s.database_url {
        let url = url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Never the URL itself: it may hold a password.
            bail!(
                "{} must be a postgres:// URL (the embedded default needs none)",
                named("database_url")
            );
        }
    }
    // Port 0 picks a free port for each, so the same text is fine there.
    if s.admin_listen.as_deref() == Some(s.listen.as_str()) && !s.listen.ends_with(":0") {
        bail!(
            "{} must have an address of its own, not the listen address",
            named("admin_listen")
        );
    }
    if s.action_max_attempts == 0 {
        bail!("{} must be at least 1", named("action_max_attempts"));
    }
    if s.webhook_tolerance_secs <= 0 {
        bail!(
            "{} must be a positive number of seconds",
            named("webhook_tolerance_secs")
        );
    }
    if !s.didit_base_url.starts_with("http://") && !s.didit_base_url.starts_with("https://") {
        bail!(
            "{} must start with http:// or https://",
            named("didit_base_url")
        );
    }
    if s.retry_time_scale <= 0.0 {
        bail!("{}: expected a positive number", named("retry_time_scale"));
    }
    // Read here too, so that `config check` finds a bad bundle before a
    // start does.
    kycd_server::ca_bundle::CaBundle::from_settings(s)
        .map_err(|e| anyhow!("{}: {e}", named("ca_bundle")))?;
    crate::logging::filter(&s.log).map_err(|e| anyhow!("{}: {e}", named("log")))?;
    Ok(())
}

pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A setting's default as TOML, or `unset`.
fn default_text(s: &Setting) -> String {
    match (s.get)(&Settings::default()) {
        Some(v) => v.to_string(),
        None => "unset".to_owned(),
    }
}

/// `# ` before each line of a setting's help.
fn comment(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {l}\n")
            }
        })
        .collect()
}

/// Where a setting is read from besides the file, as one comment line.
fn spellings(s: &Setting) -> String {
    let env = if s.meta.entries.is_empty() {
        s.meta.env.to_owned()
    } else {
        s.env_names().join(", ")
    };
    let mut out = format!("Environment: {env}");
    if let Some(alias) = s.meta.alias {
        out.push_str(&format!(" (or {alias})"));
    }
    if let Some(flag) = s.meta.flag {
        out.push_str(&format!(". Flag: --{flag}"));
        if let Some(v) = s.meta.value_name {
            out.push_str(&format!(" {v}"));
        }
    }
    if !s.meta.file {
        out.push_str(". Not a file key");
    }
    out.push('.');
    out
}

const LAYERING: &str = "\
Layering: compiled-in defaults, then this file (--config FILE or
KYCD_CONFIG), then KYCD_* environment variables, then flags. Unknown keys
are an error.";

/// `config/default.toml`: every setting with its help, at its default (or,
/// when it has none, an example commented out).
pub fn render_default() -> String {
    let mut out = comment(&format!(
        "kycd's configuration, with every key at its compiled-in default.\n\
         Generated by `kycd config default` from the settings' declarations\n\
         (crates/kycd-server/src/settings.rs): change those, not this file.\n\
         {LAYERING}\n\
         Secrets are better given through the environment than written here."
    ));
    for s in SETTINGS {
        out.push('\n');
        out.push_str(&comment(&s.help()));
        out.push_str(&comment(&spellings(s)));
        if !s.meta.file {
            out.push_str(&format!("# ({} cannot be set here.)\n", s.key));
            continue;
        }
        match ((s.get)(&Settings::default()), s.meta.example) {
            (Some(v), _) if !s.meta.secret => out.push_str(&format!("{} = {v}\n", s.key)),
            (_, Some(example)) => out.push_str(&format!("# {} = {example}\n", s.key)),
            (_, None) => out.push_str(&format!("# {} =\n", s.key)),
        }
    }
    out
}

/// `config check`: the effective configuration as TOML. Each line says
/// where its value came from; secrets and settings that are not file keys
/// stay commented out, so the output read back as a configuration file
/// gives the same settings except those.
pub fn render_check(loaded: &Loaded) -> String {
    let file = match &loaded.file {
        Some(path) => format!("Configuration file read: {}.", path.display()),
        None => "No configuration file was read.".to_owned(),
    };
    let mut out = comment(&format!(
        "kycd's effective configuration (`kycd config check`). Each value says\n\
         where it came from. Secrets are hidden and commented out, so read back\n\
         as a configuration file this gives the same settings, without the\n\
         secrets.\n\
         {file}\n"
    ));
    for s in SETTINGS {
        let from = match loaded.sources.get(s.key) {
            Some(list) if !list.is_empty() => {
                let names: Vec<String> = list.iter().map(ToString::to_string).collect();
                format!("from {}", names.join(", "))
            }
            _ => "default".to_owned(),
        };
        let line = match (s.get)(&loaded.settings) {
            None => format!("# {}: not set ({from})\n", s.key),
            Some(v) if s.meta.secret => format!("# {} = {v}  # {from}\n", s.key),
            Some(v) if !s.meta.file => {
                format!("# {} = {v}  # {from}; not a file key\n", s.key)
            }
            Some(v) => format!("{} = {v}  # {from}\n", s.key),
        };
        out.push_str(&line);
    }
    out
}

/// `docs/settings.md`: the table of every setting.
pub fn render_docs() -> String {
    let cell = |text: &str| {
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|")
    };
    let mut out = String::from(
        "# Settings\n\n\
         Every setting of `kycd serve` (and of the commands that open its data\n\
         directory). Generated by `kycd config docs` from the declarations in\n\
         `crates/kycd-server/src/settings.rs`; `config/default.toml` (from\n\
         `kycd config default`) has the same settings as a configuration file.\n\
         See [configuration.md](configuration.md) for how the layers combine.\n\n\
         | File key | Environment | Flag | Default | What it does |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for s in SETTINGS {
        let key = if s.meta.file {
            format!("`{}`", s.key)
        } else {
            format!("({}: not a file key)", s.key)
        };
        let mut env: Vec<String> = s.env_names().iter().map(|e| format!("`{e}`")).collect();
        if let Some(alias) = s.meta.alias {
            env.push(format!("`{alias}`"));
        }
        let flag = match (s.meta.flag, s.meta.value_name) {
            (Some(f), Some(v)) => format!("`--{f} {v}`"),
            (Some(f), None) => format!("`--{f}`"),
            (None, _) => String::new(),
        };
        let default = match (s.get)(&Settings::default()) {
            Some(v) if !s.meta.secret => format!("`{}`", cell(&v.to_string())),
            _ => "unset".to_owned(),
        };
        let mut help = cell(&s.help());
        if s.meta.secret {
            help.push_str(" (A secret: never printed.)");
        }
        out.push_str(&format!(
            "| {key} | {} | {flag} | {default} | {help} |\n",
            env.join(", ")
        ));
    }
    out
}

pub fn check(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args, &process_env())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", render_check(&loaded));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// `kycd serve ARGS` as the command line parses it.
    fn flags(args: &[&str]) -> ServeArgs {
        use clap::{Args, FromArgMatches};
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        let m = cmd
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        ServeArgs::from_arg_matches(&m).unwrap()
    }

    fn with_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kycd.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    fn load_file(text: &str, env: &[(String, String)]) -> anyhow::Result<Loaded> {
        let (_dir, file) = with_file(text);
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        load(&args, env)
    }

    fn repo_file(path: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every setting's value as TOML text, by key (`None`: unset).
    fn values(s: &Settings) -> Vec<(&'static str, Option<String>)> {
        SETTINGS
            .iter()
            .map(|x| (x.key, (x.get)(s).map(|v| v.to_string())))
            .collect()
    }

    #[test]
    fn layers_apply_defaults_then_file_then_env_then_flags() {
        let (_dir, file) = with_file(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nwebhook_tolerance_secs = 60\n",
        );
        let mut args = flags(&["--listen", "127.0.0.1:3"]);
        args.config = Some(file);
        let l = load(
            &args,
            &env(&[
                ("KYCD_LISTEN", "127.0.0.1:2"),
                ("KYCD_DATA_DIR", "/from/env"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.listen, "127.0.0.1:3");
        assert_eq!(l.settings.data_dir, PathBuf::from("/from/env"));
        assert_eq!(l.settings.webhook_tolerance_secs, 60);
        assert_eq!(l.sources["listen"], [Source::Flag("listen".into())]);
        assert_eq!(l.sources["data_dir"], [Source::Env("KYCD_DATA_DIR".into())]);
        assert_eq!(l.sources["webhook_tolerance_secs"], [Source::File]);
        let d = load(&ServeArgs::default(), &[]).unwrap().settings;
        assert_eq!(d.listen, "127.0.0.1:8080");
        assert_eq!(d.data_dir, PathBuf::from("./kycd-data"));
        assert_eq!(d.didit_base_url, "https://verification.didit.me");
        assert!(!d.accept_simple_signature && !d.act_on_sandbox);
    }

    /// The public spellings from before the table, each still doing what it
    /// did: every `KYCD_*` variable, every file key, every flag.
    #[test]
    fn every_existing_variable_key_and_flag_still_works() {
        let e = env(&[
            ("KYCD_LISTEN", "127.0.0.1:7001"),
            ("KYCD_ADMIN_LISTEN", "127.0.0.1:7002"),
            ("KYCD_HEADER_READ_TIMEOUT_SECS", "11"),
            ("KYCD_BODY_READ_TIMEOUT_SECS", "31"),
            ("KYCD_IDLE_TIMEOUT_SECS", "61"),
            ("KYCD_MAX_CONNECTIONS", "99"),
            ("KYCD_PROJECTOR_STALL_SECS", "62"),
            ("KYCD_DATA_DIR", "/d"),
            ("KYCD_WEBHOOK_SECRETS", "a, b,,"),
            ("KYCD_WEBHOOK_TOLERANCE_SECS", "301"),
            ("KYCD_API_TOKEN", "tok"),
            ("KYCD_ACCEPT_SIMPLE_SIGNATURE", "yes"),
            ("KYCD_DIDIT_API_KEY", "key"),
            ("KYCD_DIDIT_BASE_URL", "http://127.0.0.1:9"),
            ("KYCD_ACT_ON_SANDBOX", "on"),
            ("KYCD_CONSOLE_COOKIE_SECURE", "0"),
            ("KYCD_DURABILITY", "NORMAL"),
            ("KYCD_POLICY", "/p.toml"),
            ("KYCD_SHADOW_POLICY", "/s.toml"),
            ("KYCD_GRAPH_WINDOW_DAYS", "30"),
            ("KYCD_OPERATOR_WEBHOOK_URL", "https://app.example/hook"),
            (
                "KYCD_OPERATOR_WEBHOOK_SECRETS",
                "whsec_MDEyMzQ1Njc4OWFiY2RlZg==",
            ),
            ("KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("KYCD_WRITEBACK", "false"),
            ("KYCD_WRITEBACK_ALLOW_LOOSENING", "1"),
            ("KYCD_BLOCKLIST_ITEMS", "face,email"),
            ("KYCD_STEP_UP_WORKFLOW_NFC", "wf-n"),
            ("KYCD_STEP_UP_WORKFLOW_PHONE", "wf-p"),
            ("KYCD_STEP_UP_WORKFLOW_BIOMETRIC_AUTH", "wf-b"),
            ("KYCD_STEP_UP_EXPIRY_SECS", "600"),
            ("KYCD_RECONCILE_INTERVAL_SECS", "0"),
            ("KYCD_RECONCILE_AFTER_SECS", "120"),
            ("KYCD_ACTION_MAX_ATTEMPTS", "3"),
            ("KYCD_RETRY_TIME_SCALE", "600"),
            ("KYCD_AUDIT_KEY_FILE", "/k"),
            ("KYCD_AUDIT_ANCHOR_FILE", "/a"),
            ("KYCD_ALLOW_BROKEN_AUDIT", "true"),
            ("KYCD_LOG", "debug"),
            ("KYCD_LOG_FORMAT", "json"),
        ]);
        let l = load(&ServeArgs::default(), &e).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let s = l.settings;
        assert_eq!(
            (s.listen.as_str(), s.admin_listen.as_deref()),
            ("127.0.0.1:7001", Some("127.0.0.1:7002"))
        );
        assert_eq!(
            (
                s.header_read_timeout_secs,
                s.body_read_timeout_secs,
                s.idle_timeout_secs,
                s.max_connections,
                s.projector_stall_secs
            ),
            (11, 31, 61, 99, 62)
        );
        assert_eq!(s.data_dir, PathBuf::from("/d"));
        let exposed: Vec<&str> = s.webhook_secrets.iter().map(|x| x.expose()).collect();
        assert_eq!(exposed, ["a", "b"]);
        assert_eq!(s.webhook_tolerance_secs, 301);
        assert_eq!(s.api_token.as_ref().map(|x| x.expose()), Some("tok"));
        assert!(s.accept_simple_signature && s.act_on_sandbox && !s.console_cookie_secure);
        assert_eq!(s.didit_api_key.as_ref().map(|x| x.expose()), Some("key"));
        assert_eq!(s.didit_base_url, "http://127.0.0.1:9");
        assert_eq!(s.durability, kycd_log::sqlite_log::Durability::Normal);
        assert_eq!(s.policy, Some(PathBuf::from("/p.toml")));
        assert_eq!(s.shadow_policy, Some(PathBuf::from("/s.toml")));
        assert_eq!(s.graph_window_days, 30);
        assert_eq!(
            s.operator_webhook_url.as_deref(),
            Some("https://app.example/hook")
        );
        assert_eq!(s.operator_webhook_secrets.len(), 1);
        assert!(s.operator_webhook_allow_private && !s.writeback && s.writeback_allow_loosening);
        assert_eq!(s.blocklist_items, "face,email");
        assert_eq!(
            s.step_up_workflows,
            BTreeMap::from([
                ("BIOMETRIC_AUTH".to_owned(), "wf-b".to_owned()),
                ("NFC".to_owned(), "wf-n".to_owned()),
                ("PHONE".to_owned(), "wf-p".to_owned()),
            ])
        );
        assert_eq!(
            (
                s.step_up_expiry_secs,
                s.reconcile_interval_secs,
                s.reconcile_after_secs,
                s.action_max_attempts
            ),
            (600, 0, 120, 3)
        );
        assert_eq!(s.retry_time_scale, 600.0);
        let audit = s.audit();
        assert_eq!(audit.key_file, Some(PathBuf::from("/k")));
        assert_eq!(audit.anchor_file, Some(PathBuf::from("/a")));
        assert!(audit.allow_broken);
        assert_eq!(s.log, "debug");
        assert_eq!(s.log_format, kycd_server::settings::LogFormat::Json);

        // Empty optional variables mean unset, as they always did.
        let s = load(
            &ServeArgs::default(),
            &env(&[
                ("KYCD_ADMIN_LISTEN", ""),
                ("KYCD_API_TOKEN", ""),
                ("KYCD_POLICY", ""),
                ("KYCD_STEP_UP_WORKFLOW_NFC", ""),
            ]),
        )
        .unwrap()
        .settings;
        assert!(s.admin_listen.is_none() && s.api_token.is_none() && s.policy.is_none());
        assert!(s.step_up_workflows.is_empty());

        // The file keys.
        let s = load_file(
            "listen = \"127.0.0.1:7001\"\nadmin_listen = \"127.0.0.1:7002\"\n\
             header_read_timeout_secs = 11\nbody_read_timeout_secs = 31\n\
             idle_timeout_secs = 61\nmax_connections = 99\nprojector_stall_secs = 62\n\
             data_dir = \"/d\"\nwebhook_secrets = [\"a\", \" b \", \"\"]\n\
             webhook_tolerance_secs = 301\napi_token = \"tok\"\n\
             accept_simple_signature = true\ndidit_api_key = \"key\"\n\
             didit_base_url = \"http://127.0.0.1:9\"\nact_on_sandbox = true\n\
             console_cookie_secure = false\ndurability = \"normal\"\n\
             policy = \"/p.toml\"\nshadow_policy = \"/s.toml\"\ngraph_window_days = 30\n\
             operator_webhook_url = \"https://app.example/hook\"\n\
             operator_webhook_secrets = [\"whsec_MDEyMzQ1Njc4OWFiY2RlZg==\"]\n\
             operator_webhook_allow_private = true\nwriteback = false\n\
             writeback_allow_loosening = true\nblocklist_items = \"face,email\"\n\
             step_up_expiry_secs = 600\nreconcile_interval_secs = 0\n\
             reconcile_after_secs = 120\naction_max_attempts = 3\n\
             audit_key_file = \"/k\"\naudit_anchor_file = \"/a\"\n\
             [step_up_workflows]\nNFC = \"wf-n\"\n",
            &env(&[("KYCD_STEP_UP_WORKFLOW_PHONE", "wf-p")]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:7002"));
        assert_eq!((s.max_connections, s.projector_stall_secs), (99, 62));
        let exposed: Vec<&str> = s.webhook_secrets.iter().map(|x| x.expose()).collect();
        assert_eq!(exposed, ["a", "b"]);
        assert_eq!(s.api_token.as_ref().map(|x| x.expose()), Some("tok"));
        assert_eq!(s.durability, kycd_log::sqlite_log::Durability::Normal);
        assert!(s.accept_simple_signature && s.act_on_sandbox && !s.console_cookie_secure);
        assert!(s.operator_webhook_allow_private && !s.writeback && s.writeback_allow_loosening);
        // The file's table, with the environment's entry added.
        assert_eq!(
            s.step_up_workflows,
            BTreeMap::from([
                ("NFC".to_owned(), "wf-n".to_owned()),
                ("PHONE".to_owned(), "wf-p".to_owned()),
            ])
        );
        assert_eq!(s.audit_key_file, Some(PathBuf::from("/k")));
        assert_eq!(s.audit_anchor_file, Some(PathBuf::from("/a")));
        assert_eq!((s.action_max_attempts, s.reconcile_interval_secs), (3, 0));

        // The flags.
        let s = load(
            &flags(&[
                "--listen",
                "127.0.0.1:7001",
                "--admin-listen",
                "127.0.0.1:7002",
                "--data-dir",
                "/d",
                "--webhook-tolerance-secs",
                "301",
                "--accept-simple-signature",
                "true",
                "--act-on-sandbox",
                "true",
                "--durability",
                "normal",
                "--allow-broken-audit",
            ]),
            &[],
        )
        .unwrap()
        .settings;
        assert_eq!(s.listen, "127.0.0.1:7001");
        assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(s.data_dir, PathBuf::from("/d"));
        assert_eq!(s.webhook_tolerance_secs, 301);
        assert!(s.accept_simple_signature && s.act_on_sandbox && s.allow_broken_audit);
        assert_eq!(s.durability, kycd_log::sqlite_log::Durability::Normal);
        let flag = |name| {
            SETTINGS
                .iter()
                .filter_map(|s| s.meta.flag)
                .any(|f| f == name)
        };
        for name in [
            "listen",
            "admin-listen",
            "data-dir",
            "webhook-tolerance-secs",
            "accept-simple-signature",
            "act-on-sandbox",
            "durability",
            "allow-broken-audit",
        ] {
            assert!(flag(name), "--{name}");
        }
    }

    #[test]
    fn unknown_file_keys_are_errors_and_unknown_env_vars_are_warnings() {
        let e = load_file("listne = \"x\"\n", &[]).err().unwrap();
        let msg = format!("{e:#}");
        assert!(msg.contains("unknown key listne"), "{msg}");
        assert!(msg.contains("did you mean listen?"), "{msg}");
        let e = load_file("allow_broken_audit = true\n", &[]).err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("not a file key") && msg.contains("KYCD_ALLOW_BROKEN_AUDIT"),
            "{msg}"
        );
        let e = load_file("[step_up_workflows]\nNCF = \"wf\"\n", &[])
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("step_up_workflows") && msg.contains("NCF"),
            "{msg}"
        );
        let l = load(
            &ServeArgs::default(),
            &env(&[
                ("KYCD_LISTN", "x"),
                ("OTHER", "y"),
                // Read by other commands' flags: not unknown.
                ("KYCD_API_URL", "http://x"),
                ("KYCD_BENCH_SECRET", "x"),
                ("KYCD_CONFIG", ""),
                // The test suite's own programs.
                ("KYCD_TEST_PROMTOOL", "/usr/bin/promtool"),
            ]),
        )
        .unwrap();
        assert_eq!(
            l.warnings,
            vec!["unknown environment variable KYCD_LISTN is ignored"]
        );
        assert!(
            !known_env().iter().any(|k| k.starts_with(TEST_SUITE_PREFIX)),
            "{TEST_SUITE_PREFIX} is the test suite's, never a setting's"
        );
    }

    #[test]
    fn malformed_values_name_the_setting_and_its_variable() {
        for (k, v, key) in [
            (
                "KYCD_ACCEPT_SIMPLE_SIGNATURE",
                "maybe",
                "accept_simple_signature",
            ),
            (
                "KYCD_WEBHOOK_TOLERANCE_SECS",
                "five",
                "webhook_tolerance_secs",
            ),
            ("KYCD_DURABILITY", "sometimes", "durability"),
            ("KYCD_DIDIT_BASE_URL", "ftp://x", "didit_base_url"),
            (
                "KYCD_HEADER_READ_TIMEOUT_SECS",
                "soon",
                "header_read_timeout_secs",
            ),
            ("KYCD_IDLE_TIMEOUT_SECS", "0", "idle_timeout_secs"),
            ("KYCD_MAX_CONNECTIONS", "0", "max_connections"),
            ("KYCD_ADMIN_LISTEN", "127.0.0.1:8080", "admin_listen"),
            ("KYCD_RETRY_TIME_SCALE", "-1", "retry_time_scale"),
            ("KYCD_LOG_FORMAT", "xml", "log_format"),
            ("KYCD_LOG", "kycd=loud", "log"),
            ("KYCD_PUBLIC_URL", "kyc.example.com", "public_url"),
            (
                "KYCD_PUBLIC_URL",
                "https://kyc.example.com/kyc",
                "public_url",
            ),
            ("KYCD_TRUSTED_PROXIES", "10.0.0.0/33", "trusted_proxies"),
            ("KYCD_CA_BUNDLE", "/nonexistent/ca.pem", "ca_bundle"),
        ] {
            let e = load(&ServeArgs::default(), &env(&[(k, v)])).err().unwrap();
            let msg = format!("{e:#}");
            assert!(msg.contains(k) && msg.contains(key), "{k}={v}: {msg}");
        }
        // In the file too; and the value itself is never echoed.
        let e = load_file("max_connections = \"lots-of-them\"\n", &[])
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("max_connections")
                && msg.contains("KYCD_MAX_CONNECTIONS")
                && msg.contains("expected a whole number")
                && !msg.contains("lots-of-them"),
            "{msg}"
        );
        let e = load(&flags(&["--durability", "often"]), &[]).err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("--durability") && msg.contains("KYCD_DURABILITY"),
            "{msg}"
        );
    }

    #[test]
    fn public_url_trusted_proxies_and_ca_bundle_are_read_and_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&pem, ca.pem()).unwrap();
        let s = load(
            &ServeArgs::default(),
            &env(&[
                ("KYCD_PUBLIC_URL", "https://KYC.example.com/"),
                ("KYCD_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
                ("KYCD_CA_BUNDLE", pem.to_str().unwrap()),
            ]),
        )
        .unwrap()
        .settings;
        assert_eq!(
            s.public_url.as_ref().map(|u| u.origin()),
            Some("https://kyc.example.com")
        );
        assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(!s.trusted_proxies.contains("192.168.0.1".parse().unwrap()));
        assert_eq!(s.ca_bundle.as_deref(), Some(pem.as_path()));
        // In the file: an array (or one comma-separated string).
        for proxies in [
            "[\"10.0.0.0/8\", \"127.0.0.1\"]",
            "\"10.0.0.0/8,127.0.0.1\"",
        ] {
            let s = load_file(&format!("trusted_proxies = {proxies}\n"), &[])
                .unwrap()
                .settings;
            assert!(s.trusted_proxies.contains("127.0.0.1".parse().unwrap()));
        }
        // A bad bundle names the setting, the variable, the path and why.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load(
            &ServeArgs::default(),
            &env(&[("KYCD_CA_BUNDLE", empty.to_str().unwrap())]),
        )
        .err()
        .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("ca_bundle (KYCD_CA_BUNDLE)")
                && msg.contains(empty.to_str().unwrap())
                && msg.contains("no PEM certificate"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_split_and_never_rendered() {
        let l = load(
            &ServeArgs::default(),
            &env(&[
                ("KYCD_WEBHOOK_SECRETS", "current-secret, previous-secret"),
                ("KYCD_API_TOKEN", "tok-123456"),
                ("KYCD_DIDIT_API_KEY", "key-abcdef"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.webhook_secrets.len(), 2);
        assert_eq!(l.settings.webhook_secrets[0].expose(), "current-secret");
        let shown = format!("{}{:?}", render_check(&l), l.settings);
        for secret in [
            "current-secret",
            "previous-secret",
            "tok-123456",
            "key-abcdef",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
        assert!(shown.contains(
            "# webhook_secrets = [\"<hidden>\", \"<hidden>\"]  # from KYCD_WEBHOOK_SECRETS"
        ));
        assert!(shown.contains("# api_token = \"<hidden>\"  # from KYCD_API_TOKEN"));
    }

    /// `config check` prints TOML that, read back as the only layer, gives
    /// the same settings (secrets, which it hides, and settings that are not
    /// file keys aside).
    #[test]
    fn config_check_output_parses_and_round_trips() {
        let (_dir, file) = with_file(
            "max_connections = 50\nwebhook_secrets = [\"s1\"]\n[step_up_workflows]\nNFC = \"wf-1\"\n",
        );
        let mut args = flags(&["--durability", "normal", "--data-dir", "/tmp/x y\"z"]);
        args.config = Some(file);
        let l = load(
            &args,
            &env(&[
                ("KYCD_ADMIN_LISTEN", "127.0.0.1:9"),
                ("KYCD_RETRY_TIME_SCALE", "2.5"),
                ("KYCD_STEP_UP_WORKFLOW_PHONE", "wf-2"),
                ("KYCD_API_TOKEN", "tok-123456"),
                ("KYCD_ALLOW_BROKEN_AUDIT", "true"),
                ("KYCD_LOG_FORMAT", "json"),
                ("KYCD_PUBLIC_URL", "https://kyc.example.com:8443"),
                ("KYCD_TRUSTED_PROXIES", "10.0.0.0/8,::1"),
            ]),
        )
        .unwrap();
        let shown = render_check(&l);
        let parsed: toml::Table = shown.parse().unwrap_or_else(|e| panic!("{e}\n{shown}"));
        for s in SETTINGS {
            let expect = s.meta.file && !s.meta.secret && (s.get)(&l.settings).is_some();
            assert_eq!(parsed.contains_key(s.key), expect, "{}\n{shown}", s.key);
            assert!(shown.contains(s.key), "{} missing", s.key);
        }
        assert!(
            shown.contains("max_connections = 50  # from the file"),
            "{shown}"
        );
        assert!(
            shown.contains("durability = \"normal\"  # from --durability"),
            "{shown}"
        );
        assert!(
            shown.contains("# from the file, KYCD_STEP_UP_WORKFLOW_PHONE"),
            "{shown}"
        );
        assert!(
            shown.contains("listen = \"127.0.0.1:8080\"  # default"),
            "{shown}"
        );

        let again = load_file(&shown, &[]).unwrap();
        let strip = |s: &Settings| -> Vec<(&'static str, Option<String>)> {
            values(s)
                .into_iter()
                .filter(|(k, _)| setting(k).is_some_and(|x| x.meta.file && !x.meta.secret))
                .collect()
        };
        assert_eq!(strip(&again.settings), strip(&l.settings));
        // The secrets and the one-start switch are not carried over.
        assert!(again.settings.api_token.is_none() && again.settings.webhook_secrets.is_empty());
        assert!(!again.settings.allow_broken_audit);
        // And the second rendering is the first, but for where values came from.
        let twice = render_check(&again);
        let shape = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split("  # ").next().unwrap_or("").to_owned())
                .collect()
        };
        assert_eq!(shape(&twice), shape(&shown));
    }

    #[test]
    fn the_checked_in_default_toml_is_the_generated_one() {
        let generated = render_default();
        assert!(
            repo_file("config/default.toml") == generated,
            "config/default.toml is stale: run `cargo run -p kycd -- config default > config/default.toml`"
        );
        // Every setting appears in it, and it loads to the defaults.
        let table: toml::Table = generated.parse().unwrap();
        for s in SETTINGS {
            assert!(
                generated.contains(&format!("\n{} = ", s.key))
                    || generated.contains(&format!("\n# {} = ", s.key))
                    || (!s.meta.file && generated.contains(&format!("({} cannot", s.key))),
                "{} missing",
                s.key
            );
            assert!(
                table.contains_key(s.key)
                    || (s.get)(&Settings::default()).is_none()
                    || !s.meta.file,
                "{} has a default but is commented out",
                s.key
            );
        }
        let l = load_file(&generated, &[]).unwrap();
        assert_eq!(values(&l.settings), values(&Settings::default()));
    }

    /// Each commented-out example in config/default.toml is a valid value
    /// of its setting, so uncommenting one is safe.
    #[test]
    fn every_example_is_a_valid_value() {
        for s in SETTINGS {
            let unset = (s.get)(&Settings::default()).is_none() || s.meta.secret;
            if unset && s.meta.file {
                let example = s
                    .meta
                    .example
                    .unwrap_or_else(|| panic!("{} has no example", s.key));
                let table: toml::Table = format!("{} = {example}", s.key).parse().unwrap();
                let mut settings = Settings::default();
                (s.set_toml)(&mut settings, &table[s.key], &s.meta)
                    .unwrap_or_else(|e| panic!("{}: {e}", s.key));
                assert!((s.get)(&settings).is_some(), "{}", s.key);
            }
        }
    }

    #[test]
    fn the_checked_in_settings_table_is_the_generated_one() {
        let generated = render_docs();
        assert!(
            repo_file("docs/settings.md") == generated,
            "docs/settings.md is stale: run `cargo run -p kycd -- config docs > docs/settings.md`"
        );
        for s in SETTINGS {
            assert!(generated.contains(s.key), "{}", s.key);
        }
    }

    #[test]
    fn every_setting_is_declared_once_and_spelled_consistently() {
        fn once(what: &str, mut list: Vec<String>) {
            let n = list.len();
            list.sort();
            list.dedup();
            assert_eq!(list.len(), n, "a {what} is declared twice");
        }
        once("key", SETTINGS.iter().map(|s| s.key.to_owned()).collect());
        once(
            "variable",
            SETTINGS.iter().flat_map(|s| s.env_names()).collect(),
        );
        once(
            "flag",
            SETTINGS
                .iter()
                .filter_map(|s| s.meta.flag.map(str::to_owned))
                .collect(),
        );
        for s in SETTINGS {
            assert!(s.meta.env.starts_with("KYCD_"), "{}", s.key);
            assert!(!s.help().is_empty(), "{} has no help", s.key);
            if s.meta.entries.is_empty() {
                assert_eq!(
                    s.meta.env,
                    format!("KYCD_{}", s.key.to_ascii_uppercase()),
                    "the variable is the key in capitals"
                );
            }
            if let Some(flag) = s.meta.flag {
                assert_eq!(
                    flag,
                    s.key.replace('_', "-"),
                    "the flag is the key with dashes"
                );
            }
        }
    }
}
