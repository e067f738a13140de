//! Vaccine (Huang et al. 2024), as Booster's `BaseTrainer` runs it: pass 1 records the gradient
//! `g_l` of the loss with respect to each attention module's output; the perturbation
//! `eps_l = rho * g_l / (||{g_l}|| + 1e-7)` (global norm over layers) is added to those outputs in
//! pass 2, whose parameter gradient makes the step.

use candle_core::Var;
use serde::{Deserialize, Serialize};

use super::params::{MethodOptions, StageInputs, Trained, Validate};
use super::sft::TrainParams;
use crate::model::layers::GradientProbe;
use crate::model::{CausalLm, ForwardOptions, HookPoint, Result};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::{accumulate, lm_loss, GradientRule, Gradients, TrainBatch};

pub struct VaccineRule {
    pub rho: f64,
}

impl VaccineRule {
    /// The perturbation for one batch (one tensor per layer, shaped like the attention output).
    pub fn perturbation(&self, model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions) -> Result<Vec<candle_core::Tensor>> {
        let probe = GradientProbe::new(HookPoint::AttentionOutput);
        let loss = lm_loss(model, batch, &opts.with_hook(&probe))?;
        let grads = probe.gradients(&loss.backward()?)?;
        let mut sq = 0f64;
        for g in &grads {
            sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        let scale = self.rho / (sq.sqrt() + 1e-7);
        Ok(grads.iter().map(|g| (g * scale).map(|t| t.detach())).collect::<candle_core::Result<_>>()?)
    }
}

impl GradientRule for VaccineRule {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        accumulate(params, micro_batches, TrainBatch::num_targets, |mb| {
            let eps = self.perturbation(model, mb, opts)?;
            let hook = GradientProbe::with_perturbation(HookPoint::AttentionOutput, eps);
            lm_loss(model, mb, &opts.with_hook(&hook))
        })
    }

    /// Stateless: the perturbation is recomputed from each batch.
    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::Null)
    }
}

/// `vaccine = { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaccineParams {
    /// Perturbation radius (the Vaccine paper's default 2).
    #[serde(default = "default_rho")]
    pub rho: f64,
}

fn default_rho() -> f64 {
    2.0
}

impl Default for VaccineParams {
    fn default() -> Self {
        Self { rho: default_rho() }
    }
}

impl MethodOptions for VaccineParams {
    const KEY: &'static str = "vaccine";
}

impl StageInputs for VaccineParams {
    fn datasets(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl Validate for VaccineParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        super::params::check_range("vaccine.rho", self.rho, 0.0, f64::INFINITY)
    }
}

/// The `vaccine` train method: SFT on the alignment data with perturbation-aware steps.
pub struct Vaccine;

impl super::TypedMethod for Vaccine {
    const NAME: &'static str = "vaccine";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams, VaccineParams>;
    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let rho = p.options.rho;
        super::sft::run_with(ctx, &p.optim, &p.params, &|_| Ok(Box::new(VaccineRule { rho })))
    }
}
