//! Decision tables as JDM graphs (the GoRules editor's JSON).
//!
//! A table file is one graph, `inputNode -> decisionTableNode ->
//! outputNode`, whose table writes `{score?, outcome?, reason?, checks?,
//! nodes?}` (hit policy `first`) or a list of them (`collect`). Anything
//! else (functions, switches, expression nodes, custom nodes,
//! sub-decisions, pass-through, schemas) is refused at load: it would bring
//! JavaScript, I/O or loaders into what must be a pure function, or change
//! what the table outputs.
//!
//! The graph is read into zen-types' JDM model, the crate zen-engine itself
//! reads graphs with (it re-exports it as `zen_engine::model`) and which
//! zen-expression already depends on, so reading a graph costs no crate of
//! its own and reads every file exactly as zen-engine would.
//!
//! Two evaluators, one meaning:
//! - the direct one (production): every input field and cell compiled once
//!   by zen-expression at load, evaluated synchronously with zen-engine's
//!   decision-table semantics. zen-engine's graph evaluator builds a graph,
//!   an isolate and a walker and rewrites the whole input for dates on
//!   every call, which cost several times the table itself (see
//!   BENCHMARKS.md);
//! - with the `zen-reference` feature, zen-engine's own graph evaluator,
//!   the reference. Its `evaluate` is an `async fn`, but a graph of these
//!   three node kinds never awaits, so `poll_once` polls it a single time
//!   with a no-op waker instead of running an executor; a future still
//!   pending is an error, never spun on. `run_cases` then evaluates every
//!   golden case both ways and fails a case on any difference, so the two
//!   cannot drift apart unnoticed (CI runs with the feature on).

use crate::error::Problem;
use crate::expr::Compiler;
use crate::outcome::{Check, Outcome, ResubmitNode};
use crate::policy::parse_effect;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zen_expression::compiler::Opcode;
use zen_expression::expression::{Standard, Unary};
use zen_expression::vm::VM;
use zen_expression::{Expression, Scope, Variable};
use zen_types::decision::{
    BaseDecisionContent, DecisionNodeKind, DecisionTableHitPolicy, TransformExecutionMode,
};

/// The JDM graph model, zen-types' (see the module comment).
pub use zen_types::decision::BaseDecisionContent as JdmGraph;

/// The output fields a table may write.
const OUTPUT_FIELDS: [&str; 5] = ["score", "outcome", "reason", "checks", "nodes"];

/// One `[[table]]`: a compiled JDM graph.
#[derive(Debug, Clone)]
pub struct Table {
    pub id: Arc<str>,
    /// The JDM file as written in the policy.
    pub path: String,
    compiled: CompiledTable,
    #[cfg(feature = "zen-reference")]
    decision: zen_engine::Decision,
}

/// One matched row's output, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableHit {
    pub score: i64,
    pub outcome: Option<Outcome>,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ResubmitNode>,
}

/// What a row writes, before validation. `checks` and `nodes` accept a
/// single value or a list, since a table cell holding `'PHONE'` is easier
/// to write than `['PHONE']`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHit {
    #[serde(default)]
    score: Option<serde_json::Number>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    checks: Option<OneOrMany<String>>,
    #[serde(default)]
    nodes: Option<OneOrMany<NodeSpec>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NodeSpec {
    Feature(String),
    Node(ResubmitNode),
}

/// Polls a future once. See the module comment for why that is enough.
#[cfg(feature = "zen-reference")]
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Reads a JDM file as a decision graph, the way zen-engine's
/// `DecisionContent` does: a document with `blocks` is a GoRules policy
/// document, anything else a graph, and a graph's errors name the path of
/// the field they are about.
pub fn read_graph(json: &str) -> Result<JdmGraph, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if value
        .as_object()
        .is_some_and(|object| object.contains_key("blocks"))
    {
        return Err("this is a GoRules policy document, not a decision graph".into());
    }
    serde_path_to_error::deserialize::<_, BaseDecisionContent>(value).map_err(|e| e.to_string())
}

/// Validates one row output (a JSON object) into a hit; `None` when the row
/// says nothing (no score, no outcome), which is how a table's default row
/// reads.
fn hit_from_value(value: serde_json::Value) -> Result<Option<TableHit>, Problem> {
    if value.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(None);
    }
    let raw: RawHit = serde_json::from_value(value)
        .map_err(|e| Problem::Invalid(format!("bad table output: {e}")))?;
    let score = match raw.score {
        None => 0,
        Some(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| Problem::Invalid(format!("table score {n} is not a whole number")))?,
    };
    if score == 0 && raw.outcome.is_none() {
        return Ok(None);
    }
    let checks = raw.checks.map(OneOrMany::into_vec).unwrap_or_default();
    let nodes: Vec<ResubmitNode> = raw
        .nodes
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|n| match n {
            NodeSpec::Feature(feature) => ResubmitNode {
                feature,
                node_id: None,
            },
            NodeSpec::Node(node) => node,
        })
        .collect();
    let (outcome, checks) = parse_effect(
        raw.outcome.as_deref(),
        score,
        raw.reason.as_deref(),
        &checks,
        &nodes,
    )?;
    Ok(Some(TableHit {
        score,
        outcome,
        reason: raw.reason.unwrap_or_default(),
        checks,
        nodes,
    }))
}

/// The value of an output cell that reads nothing (`'review'`, `20`), so
/// that a misspelt outcome in a table is a load error, not a runtime one.
/// `Ok(None)` when the cell reads the facts and can only be checked when
/// its row fires.
fn constant(
    source: &str,
    compiled: &Expression<Standard>,
) -> Result<Option<serde_json::Value>, Problem> {
    let reads = compiled.bytecode().iter().any(|op| {
        matches!(
            op,
            Opcode::FetchEnv(_) | Opcode::FetchFast(_) | Opcode::FetchRootEnv
        )
    });
    if reads {
        return Ok(None);
    }
    compiled
        .evaluate(Variable::empty_object())
        .map(|v| Some(v.to_value()))
        .map_err(|e| Problem::Invalid(format!("output cell `{source}` fails to evaluate: {e}")))
}

type LoadError = (Option<String>, Problem);

/// A cell of an input column, compiled: a unary test against the column's
/// value (`> 70`, `"DEU", "AUT"`) or, in a column without a field, a
/// standard boolean expression.
#[derive(Debug, Clone)]
enum CellTest {
    Unary(Expression<Unary>),
    Standard(Expression<Standard>),
}

#[derive(Debug, Clone)]
struct CompiledRow {
    /// One entry per input column; `None` for an empty cell (matches anything).
    tests: Vec<Option<CellTest>>,
    /// Output field and its compiled cell, for every non-empty output cell.
    outputs: Vec<(String, Expression<Standard>)>,
}

/// The decision table node, compiled for direct evaluation.
#[derive(Debug, Clone)]
struct CompiledTable {
    collect: bool,
    /// Each input column's field expression (`None`: the column has none).
    fields: Vec<Option<Expression<Standard>>>,
    rows: Vec<CompiledRow>,
}

impl CompiledTable {
    /// zen-engine's decision-table semantics (hit policies `first` and
    /// `collect`, `nodes/decision_table/mod.rs` in zen-engine 2.1), for the
    /// graphs this crate accepts. A row matches when every non-empty input
    /// cell passes; a cell that fails to evaluate does not pass; a
    /// column whose field fails to evaluate fails every non-empty cell in
    /// it; a matched row whose output cell fails to evaluate is skipped.
    fn evaluate(&self, facts: &Variable, vm: &mut VM) -> serde_json::Value {
        let mut scope = Scope::new(facts.clone());
        let fields: Vec<Option<Variable>> = self
            .fields
            .iter()
            .map(|f| {
                f.as_ref()
                    .and_then(|f| f.evaluate_with_scope(&scope, vm).ok())
            })
            .collect();
        let mut hits = Vec::new();
        'rows: for row in &self.rows {
            for (test, field) in row.tests.iter().zip(&fields) {
                let Some(test) = test else { continue };
                let passed = match test {
                    CellTest::Unary(cell) => match field {
                        Some(value) => {
                            scope.set_local(Variable::dollar_key(), value.clone());
                            cell.evaluate_with_scope(&scope, vm).unwrap_or(false)
                        }
                        None => false,
                    },
                    CellTest::Standard(cell) => cell
                        .evaluate_with_scope(&scope, vm)
                        .ok()
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                };
                if !passed {
                    continue 'rows;
                }
            }
            let mut output = serde_json::Map::new();
            for (field, cell) in &row.outputs {
                match cell.evaluate_with_scope(&scope, vm) {
                    Ok(value) => {
                        output.insert(field.clone(), value.to_value());
                    }
                    Err(_) => continue 'rows,
                }
            }
            if !self.collect {
                return serde_json::Value::Object(output);
            }
            hits.push(serde_json::Value::Object(output));
        }
        if self.collect {
            serde_json::Value::Array(hits)
        } else {
            serde_json::Value::Null
        }
    }
}

fn is_empty_schema(schema: Option<&Arc<serde_json::Value>>) -> bool {
    schema.is_none_or(|s| s.is_null() || s.as_object().is_some_and(|o| o.is_empty()))
}

impl Table {
    /// Parses and checks a JDM graph. Errors carry the cell they are about
    /// (`node "...", row n, column "..."`) when there is one.
    pub(crate) fn load(
        id: Arc<str>,
        path: String,
        json: &str,
        compiler: &mut Compiler,
    ) -> Result<Table, LoadError> {
        let bad = |msg: String| (None, Problem::BadJdm(msg));
        let graph = read_graph(json).map_err(bad)?;

        // The one shape accepted: input -> decision table -> output. Several
        // tables are several [[table]] entries, each its own file.
        let shape = || {
            bad("a table graph must be exactly input node -> decision table node -> output node \
                 (use one file per table; functions, switches, expressions, custom nodes and sub-decisions are not allowed)"
                .into())
        };
        if graph.nodes.len() != 3 || graph.edges.len() != 2 {
            return Err(shape());
        }
        let (mut input, mut table, mut output) = (None, None, None);
        for node in &graph.nodes {
            match &node.kind {
                DecisionNodeKind::InputNode { content } if input.is_none() => {
                    if !is_empty_schema(content.schema.as_ref()) {
                        return Err(bad("leave the input node's schema empty: the facts are defined by docs/facts.md".into()));
                    }
                    input = Some(node.id.clone());
                }
                DecisionNodeKind::OutputNode { content } if output.is_none() => {
                    if !is_empty_schema(content.schema.as_ref()) {
                        return Err(bad(
                            "leave the output node's schema empty: the output is checked by kycd"
                                .into(),
                        ));
                    }
                    output = Some(node.id.clone());
                }
                DecisionNodeKind::DecisionTableNode { content } if table.is_none() => {
                    table = Some((node.id.clone(), node.name.clone(), content.clone()));
                }
                _ => return Err(shape()),
            }
        }
        let (Some(input), Some((table_id, name, content)), Some(output)) = (input, table, output)
        else {
            return Err(shape());
        };
        let edge = |from: &str, to: &str| {
            graph
                .edges
                .iter()
                .any(|e| e.source_id.as_ref() == from && e.target_id.as_ref() == to)
        };
        if !edge(&input, &table_id) || !edge(&table_id, &output) {
            return Err(shape());
        }

        let at = |cell: String| Some(format!("node \"{name}\", {cell}"));
        let ta = &content.transform_attributes;
        if ta.pass_through {
            return Err((
                at("settings".into()),
                Problem::BadJdm(
                    "turn \"pass through\" off: a table's output must be only its own columns"
                        .into(),
                ),
            ));
        }
        if ta.input_field.is_some()
            || ta.output_path.is_some()
            || ta.execution_mode != TransformExecutionMode::Single
        {
            return Err((
                at("settings".into()),
                Problem::BadJdm(
                    "leave \"input field\" and \"output path\" empty and the execution mode single: \
                     tables read the whole facts document and write {score, outcome, reason, checks, nodes}"
                        .into(),
                ),
            ));
        }
        for o in content.outputs.iter() {
            let field = o.field.trim();
            if !OUTPUT_FIELDS.contains(&field) {
                return Err((
                    at(format!("output column \"{}\"", o.name)),
                    Problem::BadJdm(format!(
                        "output field \"{field}\" is not one of score, outcome, reason, checks, nodes"
                    )),
                ));
            }
        }
        let mut fields = Vec::with_capacity(content.inputs.len());
        for i in content.inputs.iter() {
            let compiled = match &i.field {
                Some(field) => Some(
                    compiler
                        .standard(field, true)
                        .map_err(|p| (at(format!("input column \"{}\" field", i.name)), p))?,
                ),
                None => None,
            };
            fields.push(compiled);
        }
        let mut rows = Vec::with_capacity(content.rules.len());
        for (row_index, row) in content.rules.iter().enumerate() {
            let row_name = match row.get("_id") {
                Some(rid) => format!("row {} ({rid})", row_index + 1),
                None => format!("row {}", row_index + 1),
            };
            let mut tests = Vec::with_capacity(content.inputs.len());
            for i in content.inputs.iter() {
                let Some(cell) = row.get(&i.id).filter(|c| !c.trim().is_empty()) else {
                    tests.push(None);
                    continue;
                };
                let cell_at = || at(format!("{row_name}, column \"{}\"", i.name));
                let test = match &i.field {
                    Some(_) => {
                        CellTest::Unary(compiler.unary(cell, true).map_err(|p| (cell_at(), p))?)
                    }
                    None => CellTest::Standard(
                        compiler.standard(cell, true).map_err(|p| (cell_at(), p))?,
                    ),
                };
                tests.push(Some(test));
            }
            let mut outputs = Vec::new();
            let mut written = serde_json::Map::new();
            let mut reads_input = false;
            for o in content.outputs.iter() {
                let Some(cell) = row.get(&o.id).filter(|c| !c.trim().is_empty()) else {
                    continue;
                };
                let cell_at = || at(format!("{row_name}, column \"{}\"", o.name));
                let compiled = compiler.standard(cell, true).map_err(|p| (cell_at(), p))?;
                match constant(cell, &compiled).map_err(|p| (cell_at(), p))? {
                    Some(v) => {
                        written.insert(o.field.trim().to_owned(), v);
                    }
                    None => reads_input = true,
                }
                outputs.push((o.field.trim().to_owned(), compiled));
            }
            // A row whose outputs are all constants is checked in full now;
            // one that computes from the facts is checked when it fires.
            if !reads_input {
                hit_from_value(serde_json::Value::Object(written))
                    .map_err(|p| (at(row_name.clone()), p))?;
            }
            rows.push(CompiledRow { tests, outputs });
        }
        let compiled = CompiledTable {
            collect: content.hit_policy == DecisionTableHitPolicy::Collect,
            fields,
            rows,
        };

        #[cfg(feature = "zen-reference")]
        let decision = reference_decision(json, &content, compiler).map_err(bad)?;
        Ok(Table {
            id,
            path,
            compiled,
            #[cfg(feature = "zen-reference")]
            decision,
        })
    }

    /// Evaluates the table directly from its compiled cells: synchronous,
    /// no graph walk, no per-call setup. This is the production path.
    pub(crate) fn evaluate(&self, facts: &Variable, vm: &mut VM) -> Result<Vec<TableHit>, String> {
        hits_from_output(self.compiled.evaluate(facts, vm))
    }

    /// Evaluates the table through zen-engine's graph evaluator, the
    /// reference the direct path must agree with (golden cases check both).
    #[cfg(feature = "zen-reference")]
    pub(crate) fn evaluate_reference(&self, facts: &Variable) -> Result<Vec<TableHit>, String> {
        let response = poll_once(self.decision.evaluate(facts.clone()))
            .ok_or_else(|| "table evaluation suspended (the graph awaited something)".to_owned())?
            .map_err(|e| format!("table evaluation failed: {e}"))?;
        hits_from_output(response.result.to_value())
    }
}

/// zen-engine's evaluator for a graph already checked by [`Table::load`],
/// read by zen-engine itself from the same text, its caches compiled once.
#[cfg(feature = "zen-reference")]
fn reference_decision(
    json: &str,
    content: &zen_types::decision::DecisionTableContent,
    compiler: &mut Compiler,
) -> Result<zen_engine::Decision, String> {
    use zen_engine::model::DecisionContent;
    let read: DecisionContent = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let DecisionContent::Graph(graph) = read else {
        return Err("this is a GoRules policy document, not a decision graph".into());
    };
    let mut graph = Arc::unwrap_or_clone(graph);
    graph.compile();
    // zen-engine's cache holds the cells but not the input columns' field
    // expressions, which it would otherwise lex, parse and compile on every
    // evaluation; add them.
    if let Some(cache) = graph.compiled_cache.as_mut() {
        let cache = Arc::make_mut(cache);
        for i in content.inputs.iter() {
            let Some(field) = &i.field else { continue };
            if cache.standard.contains_key(field) {
                continue;
            }
            if let Ok(code) = compiler.standard(field, false) {
                cache
                    .standard
                    .insert(field.clone(), code.bytecode().clone());
            }
        }
    }
    let decision = zen_engine::Decision::from(Arc::new(graph));
    decision.validate().map_err(|e| e.to_string())?;
    Ok(decision)
}

/// A table's output (`null`, one row object or a list of them) as hits.
fn hits_from_output(value: serde_json::Value) -> Result<Vec<TableHit>, String> {
    let rows = match value {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(rows) => rows,
        row => vec![row],
    };
    let mut hits = Vec::new();
    for row in rows {
        if let Some(hit) = hit_from_value(row).map_err(|p| p.to_string())? {
            hits.push(hit);
        }
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_and_zero_rows_do_not_fire() {
        assert_eq!(hit_from_value(json!({})), Ok(None));
        assert_eq!(hit_from_value(json!({"score": 0})), Ok(None));
    }

    #[test]
    fn a_row_with_an_effect_needs_a_reason() {
        assert!(hit_from_value(json!({"score": 10})).is_err());
        assert_eq!(
            hit_from_value(json!({"score": 10.0, "reason": "x"})),
            Ok(Some(TableHit {
                score: 10,
                outcome: None,
                reason: "x".into(),
                checks: vec![],
                nodes: vec![],
            }))
        );
    }

    #[test]
    fn checks_and_nodes_take_one_or_many() {
        let hit = hit_from_value(json!({"outcome": "step_up", "checks": "PHONE", "reason": "r"}));
        assert_eq!(
            hit.map(|h| h.map(|h| h.checks)),
            Ok(Some(vec![Check::Phone]))
        );
        let hit = hit_from_value(
            json!({"outcome": "resubmit", "nodes": ["LIVENESS", {"feature": "ID_VERIFICATION", "node_id": "n1"}], "reason": "r"}),
        );
        assert_eq!(hit.map(|h| h.map(|h| h.nodes.len())), Ok(Some(2)));
    }

    #[test]
    fn fractional_scores_are_refused() {
        assert!(hit_from_value(json!({"score": 2.5, "reason": "x"})).is_err());
    }
}
