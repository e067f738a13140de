//! The `filter` generate method: a filter step usable after any generate stage (self-instruct's
//! and red-teaming's filters, mistake analysis's cleaning). It reads a dataset (usually `@gen`),
//! applies the rules of `rules = { ... }` ([`FilterSpec`]: length bounds, phrase blacklists,
//! regex keep/drop, dedup by normalized text, ROUGE-L similarity against the pool so far) to one
//! text field of every record, and writes the records it kept as a dataset of the same kind, with
//! what each rule dropped in `filter.json` and in the stage's metrics (`filter_dropped_<rule>`).

use serde::{Deserialize, Serialize};

use super::params::{StageInputs, Validate};
use crate::data::filter::FilterSpec;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// The records to filter.
    pub data: String,
    /// The text field the rules look at (`instruction`, `input`, `output`; `prompt`, `chosen`,
    /// `rejected`; `response`).
    #[serde(default = "default_field")]
    pub field: String,
    /// A dataset whose texts start the ROUGE-L and dedup pool (self-instruct's seed tasks).
    #[serde(default)]
    pub pool: Option<String>,
    /// The pool dataset's text field (default: `field`).
    #[serde(default)]
    pub pool_field: Option<String>,
    #[serde(default)]
    pub rules: FilterSpec,
}

fn default_field() -> String {
    "instruction".into()
}

crate::whole_table_params!(FilterParams);

impl Validate for FilterParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        self.rules.check().map_err(|e| ParamError::new("rules", e.to_string()))
    }
}

impl StageInputs for FilterParams {
    fn datasets(&self) -> Vec<&str> {
        let mut v = vec![self.data.as_str()];
        v.extend(self.pool.as_deref());
        v
    }
}

/// The `filter` generate method.
pub struct Filter;

impl super::TypedMethod for Filter {
    const NAME: &'static str = "filter";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = FilterParams;

    fn run(ctx: &StageContext, p: &FilterParams) -> Result<Metrics, StageError> {
        let data = ctx.dataset(&p.data)?;
        let pool_data = p.pool.as_deref().map(|name| ctx.dataset(name)).transpose()?;
        let texts = data.items().texts(&p.field)?;
        let pool: Vec<&str> = match &pool_data {
            Some(d) => d.items().texts(p.pool_field.as_deref().unwrap_or(&p.field))?,
            None => Vec::new(),
        };
        let outcome = p.rules.apply(&texts, &pool).map_err(|e| StageError::Method(format!("stage {}: {e}", ctx.config.name)))?;
        tracing::info!(input = outcome.report.input, kept = outcome.report.kept, dropped = ?outcome.report.dropped, "filtered");
        let mut items = data.into_items();
        items.select(&outcome.kept);
        ctx.write_dataset(&items)?;
        store::write_json(&ctx.dir.filter_report(), &outcome.report)?;
        let mut metrics = Metrics::from([
            ("filter_input".to_string(), outcome.report.input as f64),
            ("filter_kept".to_string(), outcome.report.kept as f64),
        ]);
        for (rule, n) in &outcome.report.dropped {
            metrics.insert(format!("filter_dropped_{rule}"), *n as f64);
        }
        Ok(metrics)
    }
}
