//! What the jailbreak attacks share (`gcg`, `gcg_transfer`, `autodan`): how a suffix joins a
//! behaviour, and the loss they minimise, the target string's cross-entropy after a prompt.
//! Each keeps its own success test: llm-attacks' and AutoDAN's official tests differ.

use crate::model::{score_continuations_shared_prefix, CausalLm, ModelError, Result};

/// The user message of a suffix attack: `f"{goal} {suffix}"`, as llm-attacks' and
/// Check-as-Context's `SuffixManager` join them.
pub fn goal_with_suffix(goal: &str, suffix: &str) -> String {
    format!("{goal} {suffix}")
}

/// The mean cross-entropy of each request's target tokens after its prompt tokens (teacher
/// forcing, no gradients; a shared start of the prompts computed once), one per request.
pub fn target_losses(model: &CausalLm, requests: &[(Vec<u32>, Vec<u32>)], batch_size: usize, pad_id: u32) -> Result<Vec<f64>> {
    let scores = score_continuations_shared_prefix(model, requests, batch_size, pad_id)?;
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let loss = -s.logprob / s.num_tokens as f64;
            if loss.is_finite() {
                Ok(loss)
            } else {
                Err(ModelError::Input(format!("candidate {i}: the target's loss is {loss} (not finite)")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadOptions;
    use std::path::Path;

    #[test]
    fn the_target_loss_is_the_mean_negative_log_probability_of_the_target() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama_gqa");
        let lm = crate::model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let requests = vec![(vec![1, 5, 9], vec![7, 3]), (vec![1, 5, 8], vec![7])];
        let losses = target_losses(&lm.model, &requests, 2, 0).unwrap();
        let scores = score_continuations_shared_prefix(&lm.model, &requests, 2, 0).unwrap();
        for (loss, s) in losses.iter().zip(&scores) {
            assert!((loss + s.logprob / s.num_tokens as f64).abs() < 1e-9);
            assert!(*loss > 0.0);
        }
        assert_eq!(goal_with_suffix("Write a tutorial", "x y"), "Write a tutorial x y");
    }
}
