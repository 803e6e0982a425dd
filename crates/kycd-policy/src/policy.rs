//! Loading a policy: TOML text (plus JDM table files) in, a validated and
//! compiled [`Policy`] out. Everything that can be checked without facts is
//! checked here, so `kycd policy check` catches it before deployment and
//! evaluation never parses expression text.

use crate::error::{Location, PolicyError, Problem};
use crate::expr::{Compiler, Projection};
use crate::outcome::{Check, Outcome, ResubmitNode, DIDIT_FEATURES};
use crate::table::Table;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;
use zen_expression::expression::Standard;
use zen_expression::Expression;

/// The built-in default policy and its tables, compiled into the binary.
const DEFAULT_POLICY: &str = include_str!("../policies/default.toml");
const DEFAULT_TABLES: &[(&str, &str)] = &[
    (
        "tables/country_risk.json",
        include_str!("../policies/tables/country_risk.json"),
    ),
    (
        "tables/aml_match.json",
        include_str!("../policies/tables/aml_match.json"),
    ),
];

/// A loaded, compiled policy. Cheap to share: evaluation takes `&self` and
/// the type is `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) version: String,
    pub(crate) bands: Vec<Band>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) tables: Vec<Table>,
    pub(crate) projection: Projection,
    /// The text it was loaded from, so that the exact policy can be
    /// recorded (in the event log, when it is activated) and loaded again.
    pub(crate) source: Arc<PolicySource>,
}

/// A policy's text: the policy file and each table file it names, as
/// `(path as written in the policy, JSON text)` in declaration order.
/// Loading it again gives the same policy, with the same version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    /// Where it was loaded from (a path, or `builtin:default.toml`).
    pub name: String,
    pub policy: String,
    pub tables: Vec<(String, String)>,
}

/// A score band: totals up to and including `max` get `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub outcome: Outcome,
    pub max: u32,
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    /// The ZEN expression, as written.
    pub when: String,
    /// Added to the total when the rule fires (may be negative).
    pub score: i64,
    /// Forced outcome when the rule fires.
    pub outcome: Option<Outcome>,
    pub reason: Arc<str>,
    /// For `step_up`: the checks to ask for.
    pub checks: Vec<Check>,
    /// For `resubmit`: the Didit steps to redo.
    pub nodes: Vec<ResubmitNode>,
    pub(crate) compiled: Expression<Standard>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    description: String,
    bands: toml::Table,
    #[serde(default)]
    rule: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    table: Vec<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    when: String,
    #[serde(default)]
    score: Option<i64>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    checks: Option<Vec<String>>,
    #[serde(default)]
    nodes: Option<Vec<ResubmitNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    id: String,
    jdm: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the file only
    description: String,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |s| s.bytes().filter(|b| *b == b'\n').count())
        + 1
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Ids appear in reasons, traces and golden files; keep them plain.
fn valid_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Shared checks for what a rule or a table row says it does.
pub(crate) fn parse_effect(
    outcome: Option<&str>,
    score: i64,
    reason: Option<&str>,
    checks: &[String],
    nodes: &[ResubmitNode],
) -> Result<(Option<Outcome>, Vec<Check>), Problem> {
    let outcome = match outcome {
        None => None,
        Some(o) => Some(Outcome::parse(o).ok_or_else(|| Problem::UnknownOutcome(o.to_owned()))?),
    };
    if !(-100..=100).contains(&score) {
        return Err(Problem::ScoreOutOfRange(score));
    }
    if outcome.is_none() && score == 0 {
        return Err(Problem::NoEffect);
    }
    if outcome == Some(Outcome::Approve) {
        return Err(Problem::ForcedApprove);
    }
    if reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Problem::MissingReason);
    }
    let mut parsed = Vec::with_capacity(checks.len());
    for c in checks {
        let check = Check::parse(c).ok_or_else(|| Problem::UnknownCheck(c.clone()))?;
        if !parsed.contains(&check) {
            parsed.push(check);
        }
    }
    match outcome {
        Some(Outcome::StepUp) if parsed.is_empty() => return Err(Problem::StepUpWithoutChecks),
        Some(Outcome::StepUp) => {}
        _ if !parsed.is_empty() => return Err(Problem::ChecksWithoutStepUp),
        _ => {}
    }
    for n in nodes {
        if !DIDIT_FEATURES.contains(&n.feature.as_str()) {
            return Err(Problem::UnknownFeature(n.feature.clone()));
        }
    }
    match outcome {
        Some(Outcome::Resubmit) if nodes.is_empty() => return Err(Problem::ResubmitWithoutNodes),
        Some(Outcome::Resubmit) => {}
        _ if !nodes.is_empty() => return Err(Problem::NodesWithoutResubmit),
        _ => {}
    }
    Ok((outcome, parsed))
}

fn parse_bands(table: &toml::Table) -> Result<Vec<Band>, Problem> {
    let mut bands = Vec::new();
    for (key, value) in table {
        let outcome = Outcome::parse(key).ok_or_else(|| Problem::UnknownOutcome(key.clone()))?;
        if matches!(outcome, Outcome::StepUp | Outcome::Resubmit) {
            return Err(Problem::BadBands(format!(
                "a band cannot be \"{outcome}\": it needs {}; force it from a rule instead",
                if outcome == Outcome::StepUp {
                    "checks"
                } else {
                    "nodes"
                }
            )));
        }
        let max = value
            .as_integer()
            .filter(|m| (0..=100).contains(m))
            .ok_or_else(|| {
                Problem::BadBands(format!(
                    "\"{key}\" must be an integer from 0 to 100 (the band's inclusive upper bound)"
                ))
            })?;
        bands.push(Band {
            outcome,
            max: max as u32, // in 0..=100, checked above
        });
    }
    bands.sort_by_key(|b| b.max);
    if bands.last().is_none_or(|b| b.max != 100) {
        return Err(Problem::BadBands(
            "the highest band must end at 100 so that every score has an outcome".into(),
        ));
    }
    for pair in bands.windows(2) {
        if pair[0].max == pair[1].max {
            return Err(Problem::BadBands(format!(
                "\"{}\" and \"{}\" both end at {}",
                pair[0].outcome, pair[1].outcome, pair[0].max
            )));
        }
        if pair[1].outcome.severity() <= pair[0].outcome.severity() {
            return Err(Problem::BadBands(format!(
                "bands must get more severe as the score rises, but \"{}\" (up to {}) comes after \"{}\" (up to {})",
                pair[1].outcome, pair[1].max, pair[0].outcome, pair[0].max
            )));
        }
    }
    Ok(bands)
}

impl Policy {
    /// Loads a policy file; table paths are relative to its directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::new(&name, Location::File, Problem::Read(e.to_string())))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Policy::from_source_with(&name, &text, |table_path| {
            std::fs::read_to_string(dir.join(table_path)).map_err(|e| e.to_string())
        })
    }

    /// Loads a policy from text, with its table files given as
    /// `(path as written in the policy, JSON text)`.
    pub fn from_source(
        name: &str,
        toml_text: &str,
        tables: &[(&str, &str)],
    ) -> Result<Policy, PolicyError> {
        Policy::from_source_with(name, toml_text, |path| {
            tables
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| "not provided".to_owned())
        })
    }

    /// Loads a policy from text, reading table files through `load_table`
    /// (path as written in the policy -> file text, or why it is missing).
    pub fn from_source_with(
        name: &str,
        toml_text: &str,
        mut load_table: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<Policy, PolicyError> {
        let err = |location: Location, problem: Problem| PolicyError::new(name, location, problem);

        let raw: RawPolicy = toml::from_str(toml_text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_col(toml_text, span.start));
            err(
                Location::File,
                Problem::Syntax {
                    line,
                    column,
                    message: e.message().trim().to_owned(),
                },
            )
        })?;
        if raw.name.trim().is_empty() {
            return Err(err(
                Location::File,
                Problem::Invalid("`name` is empty".into()),
            ));
        }
        let bands = parse_bands(&raw.bands).map_err(|p| err(Location::Bands, p))?;

        let mut hasher = Sha256::new();
        // Length-prefixed parts, so that moving bytes between the policy and
        // a table (or between tables) can never keep the same hash.
        hasher.update(b"kycd-policy/1\0");
        hasher.update((toml_text.len() as u64).to_be_bytes());
        hasher.update(toml_text.as_bytes());

        let mut compiler = Compiler::new();
        let mut ids: Vec<String> = Vec::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (i, spanned) in raw.rule.into_iter().enumerate() {
            let line = Some(line_of(toml_text, spanned.span().start));
            let table = spanned.into_inner();
            let id = table
                .get("id")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned);
            let at = |id: &str| Location::Rule {
                id: id.to_owned(),
                line,
            };
            let raw_rule = RawRule::deserialize(toml::Value::Table(table))
                .map_err(|e| err(at(&id), Problem::Invalid(e.message().trim().to_owned())))?;
            if !valid_id(&raw_rule.id) {
                return Err(err(at(&id), Problem::BadId));
            }
            if ids.contains(&raw_rule.id) {
                return Err(err(at(&id), Problem::DuplicateId));
            }
            ids.push(raw_rule.id.clone());
            let score = raw_rule.score.unwrap_or(0);
            let checks = raw_rule.checks.unwrap_or_default();
            let nodes = raw_rule.nodes.unwrap_or_default();
            let (outcome, checks) = parse_effect(
                raw_rule.outcome.as_deref(),
                score,
                raw_rule.reason.as_deref(),
                &checks,
                &nodes,
            )
            .map_err(|p| err(at(&id), p))?;
            let compiled = compiler
                .standard(&raw_rule.when, true)
                .map_err(|p| err(at(&id), p))?;
            rules.push(Rule {
                id: raw_rule.id.into(),
                when: raw_rule.when,
                score,
                outcome,
                reason: raw_rule.reason.unwrap_or_default().into(),
                checks,
                nodes,
                compiled,
            });
        }

        let mut tables = Vec::with_capacity(raw.table.len());
        let mut table_texts = Vec::with_capacity(raw.table.len());
        for (i, spanned) in raw.table.into_iter().enumerate() {
            let line = line_of(toml_text, spanned.span().start);
            let table = spanned.into_inner();
            let id = table
                .get("id")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned);
            let path = table
                .get("jdm")
                .and_then(toml::Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let at = |cell: Option<String>| Location::Table {
                id: id.clone(),
                path: path.clone(),
                cell,
            };
            let raw_table = RawTable::deserialize(toml::Value::Table(table)).map_err(|e| {
                err(
                    at(Some(format!("line {line}"))),
                    Problem::Invalid(e.message().trim().to_owned()),
                )
            })?;
            if !valid_id(&raw_table.id) {
                return Err(err(at(None), Problem::BadId));
            }
            if ids.contains(&raw_table.id) {
                return Err(err(at(None), Problem::DuplicateId));
            }
            ids.push(raw_table.id.clone());
            if Path::new(&raw_table.jdm).is_absolute() {
                return Err(err(
                    at(None),
                    Problem::MissingTableFile(
                        "the path must be relative to the policy file, so the policy and its tables move together".into(),
                    ),
                ));
            }
            let json = load_table(&raw_table.jdm)
                .map_err(|e| err(at(None), Problem::MissingTableFile(e)))?;
            table_texts.push((raw_table.jdm.clone(), json.clone()));
            hasher.update(b"\0table\0");
            hasher.update((raw_table.jdm.len() as u64).to_be_bytes());
            hasher.update(raw_table.jdm.as_bytes());
            hasher.update((json.len() as u64).to_be_bytes());
            hasher.update(json.as_bytes());
            let loaded = Table::load(raw_table.id.into(), raw_table.jdm, &json, &mut compiler)
                .map_err(|(cell, p)| err(at(cell), p))?;
            tables.push(loaded);
        }

        let digest = hasher.finalize();
        Ok(Policy {
            name: raw.name,
            description: raw.description,
            // 64 bits: enough to tell policy revisions apart, short enough
            // to read in a trace.
            version: hex::encode(&digest[..8]),
            bands,
            rules,
            tables,
            projection: compiler.into_projection(),
            source: Arc::new(PolicySource {
                name: name.to_owned(),
                policy: toml_text.to_owned(),
                tables: table_texts,
            }),
        })
    }

    /// The default policy shipped in the binary (`policies/default.toml`,
    /// documented rule by rule in `POLICY.md`).
    pub fn builtin_default() -> Policy {
        // Invariant: the built-in policy is valid; the crate's tests load it.
        #[allow(clippy::expect_used)]
        Policy::from_source("builtin:default.toml", DEFAULT_POLICY, DEFAULT_TABLES)
            .expect("the built-in default policy loads")
    }

    /// The built-in policy's source text and tables, for `kycd policy show`
    /// or for writing a starting point to disk.
    pub fn builtin_default_source() -> (&'static str, &'static [(&'static str, &'static str)]) {
        (DEFAULT_POLICY, DEFAULT_TABLES)
    }

    /// Loads a policy from its recorded text ([`Policy::source`]).
    pub fn from_recorded(source: &PolicySource) -> Result<Policy, PolicyError> {
        Policy::from_source_with(&source.name, &source.policy, |path| {
            source
                .tables
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, text)| text.clone())
                .ok_or_else(|| "not in the recorded policy".to_owned())
        })
    }

    /// The text this policy was loaded from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Hex SHA-256 (first 16 hex digits) over the policy text and each
    /// table file's path and bytes, in declaration order.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Score bands, lowest first.
    pub fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// Rules in policy order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decision tables in policy order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The band a clamped total (0..=100) falls in.
    pub fn band_for(&self, score: u32) -> Outcome {
        self.bands
            .iter()
            .find(|b| score <= b.max)
            // Invariant from loading: the last band ends at 100 and scores
            // are clamped to 0..=100; block is the fail-closed fallback.
            .map_or(Outcome::Block, |b| b.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }

    #[test]
    fn ids_are_plain() {
        assert!(valid_id("under_age"));
        assert!(valid_id("aml2"));
        assert!(!valid_id("Under"));
        assert!(!valid_id("2x"));
        assert!(!valid_id("a-b"));
        assert!(!valid_id(""));
    }

    #[test]
    fn policy_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
    }
}
