//! Load-time errors. Every one names the file, where in it (the rule or
//! table id, a line when known) and the problem, because the person reading
//! it is a risk analyst editing text in git, not the author of this crate.

use std::fmt;

/// A policy that cannot be loaded. Display reads like
/// `policy tests/bad.toml: rule "under_age" (line 12): expression does not compile: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {file}{location}: {problem}")]
pub struct PolicyError {
    /// The policy file's name as given to the loader.
    pub file: String,
    pub location: Location,
    /// Boxed to keep `Result<_, PolicyError>` small.
    pub problem: Box<Problem>,
}

/// Where in a policy a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (syntax, top-level keys).
    File,
    /// The `[bands]` table.
    Bands,
    /// One `[[rule]]`, by id (or `#n`, 1-based, when it has no usable id).
    Rule { id: String, line: Option<usize> },
    /// One `[[table]]`, by id, with the JDM file and, for a bad cell, which one.
    Table {
        id: String,
        path: String,
        cell: Option<String>,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File => Ok(()),
            Location::Bands => f.write_str(": bands"),
            Location::Rule { id, line } => {
                write!(f, ": rule \"{id}\"")?;
                if let Some(line) = line {
                    write!(f, " (line {line})")?;
                }
                Ok(())
            }
            Location::Table { id, path, cell } => {
                write!(f, ": table \"{id}\" ({path})")?;
                if let Some(cell) = cell {
                    write!(f, ", {cell}")?;
                }
                Ok(())
            }
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read: {0}")]
    Read(String),
    #[error("{0}")]
    Invalid(String),
    #[error("expression does not compile: {error} (in `{expression}`)")]
    ExpressionDoesNotCompile { expression: String, error: String },
    #[error(
        "unknown fact `{path}` (see docs/facts.md; operator data is under subject.attributes)"
    )]
    UnknownFact { path: String },
    #[error("`{function}` is not allowed: {why}")]
    ForbiddenFunction { function: String, why: &'static str },
    #[error("unknown outcome \"{0}\" (expected one of approve, review, decline, resubmit, step_up, block)")]
    UnknownOutcome(String),
    #[error("unknown check \"{0}\" (expected one of NFC, PHONE, BIOMETRIC_AUTH)")]
    UnknownCheck(String),
    #[error("unknown Didit feature \"{0}\" in nodes")]
    UnknownFeature(String),
    #[error("duplicate id (ids name reasons and must be unique across rules and tables)")]
    DuplicateId,
    #[error("bad id (use lowercase letters, digits and '_', starting with a letter)")]
    BadId,
    #[error("missing reason (every rule that can fire must say why)")]
    MissingReason,
    #[error("the rule sets neither a score nor an outcome, so it can never change a decision")]
    NoEffect,
    #[error("approve cannot be forced: it is the least severe outcome, so forcing it changes nothing (use a negative score to lower risk)")]
    ForcedApprove,
    #[error("step_up needs `checks` (NFC, PHONE or BIOMETRIC_AUTH)")]
    StepUpWithoutChecks,
    #[error("`checks` only apply to outcome \"step_up\"")]
    ChecksWithoutStepUp,
    #[error("resubmit needs `nodes` (the Didit features to redo)")]
    ResubmitWithoutNodes,
    #[error("`nodes` only apply to outcome \"resubmit\"")]
    NodesWithoutResubmit,
    #[error("score {0} is out of range (-100 to 100)")]
    ScoreOutOfRange(i64),
    #[error("{0}")]
    BadBands(String),
    #[error("missing table file: {0}")]
    MissingTableFile(String),
    #[error("not a usable JDM graph: {0}")]
    BadJdm(String),
}

impl PolicyError {
    pub(crate) fn new(file: &str, location: Location, problem: Problem) -> Self {
        PolicyError {
            file: file.to_owned(),
            location,
            problem: Box::new(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_rule_line_and_problem() {
        let e = PolicyError::new(
            "p.toml",
            Location::Rule {
                id: "under_age".into(),
                line: Some(12),
            },
            Problem::UnknownOutcome("maybe".into()),
        );
        assert_eq!(
            e.to_string(),
            "policy p.toml: rule \"under_age\" (line 12): unknown outcome \"maybe\" \
             (expected one of approve, review, decline, resubmit, step_up, block)"
        );
    }
}
