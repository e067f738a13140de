//! Sweep expansion: a grid over dotted keys, zipped groups that vary together, and seeds.

use std::collections::BTreeMap;
use toml::Value;

use super::{path, typed, LoadedSpec, Origin, Spec, SpecError};

/// One run: the swept values it takes, its seed, and its fully resolved spec.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Swept key -> value, in a stable order; includes `experiment.seed`.
    pub params: BTreeMap<String, Value>,
    pub seed: u64,
    pub spec: Spec,
}

pub fn expand(loaded: &LoadedSpec) -> Result<Vec<RunSpec>, SpecError> {
    let sweep = &loaded.spec.sweep;
    let sweep_err = |key: &str, msg: String| SpecError::Invalid {
        origin: loaded.sources.locate(&["sweep".into(), key.into()]),
        key: format!("sweep.{key}"),
        msg,
        suggestion: None,
    };
    // Resources are the runner's, per stage, not a run's: a stage shared by runs could not
    // take two.
    let swept = sweep.grid.keys().chain(sweep.zip.iter().flat_map(|g| g.keys()));
    if let Some(key) = swept.into_iter().find(|k| is_resource_key(k)) {
        return Err(sweep_err(key, "Slurm resources are not swept: set them in [slurm] or in the stage's `slurm` table".into()));
    }
    // Each axis is a list of assignments (one per point); a grid key is an axis of one key.
    let mut axes: Vec<Vec<Vec<(String, Value)>>> = Vec::new();
    for (key, values) in &sweep.grid {
        if values.is_empty() {
            return Err(sweep_err(key, "an empty list sweeps nothing".into()));
        }
        axes.push(values.iter().map(|v| vec![(key.clone(), v.clone())]).collect());
    }
    for (g, group) in sweep.zip.iter().enumerate() {
        let lens: Vec<usize> = group.values().map(Vec::len).collect();
        let n = lens.first().copied().unwrap_or(0);
        if n == 0 || lens.iter().any(|&l| l != n) {
            return Err(SpecError::Invalid {
                origin: loaded.sources.locate(&["sweep".into(), "zip".into(), g.to_string()]),
                key: format!("sweep.zip.{g}"),
                msg: format!("zipped keys need lists of one non-zero length, got lengths {lens:?}"),
                suggestion: None,
            });
        }
        axes.push((0..n).map(|i| group.iter().map(|(k, v)| (k.clone(), v[i].clone())).collect()).collect());
    }
    let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for axis in &axes {
        points = points.into_iter().flat_map(|p| axis.iter().map(move |a| p.iter().cloned().chain(a.iter().cloned()).collect())).collect();
    }
    let mut runs = Vec::new();
    for point in points {
        for &seed in &loaded.spec.experiment.seeds {
            let mut doc = loaded.document.clone();
            for (key, value) in &point {
                path::set(&mut doc, key, value.clone()).map_err(|msg| sweep_err(key, msg))?;
            }
            let overrides: Vec<(String, Origin)> =
                point.iter().map(|(k, _)| (k.clone(), loaded.sources.locate(&["sweep".into(), k.clone()]))).collect();
            let mut spec = typed(&doc, &loaded.sources, &overrides)?;
            super::resolve_paths(&mut spec, loaded.path.parent().unwrap_or(std::path::Path::new(".")));
            let mut params: BTreeMap<String, Value> = point.iter().cloned().collect();
            params.insert("experiment.seed".into(), Value::Integer(seed as i64));
            runs.push(RunSpec { params, seed, spec });
        }
    }
    Ok(runs)
}

/// `slurm.*` or `stage.<id>.slurm...`.
fn is_resource_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    parts[0] == "slurm" || (parts[0] == "stage" && parts.get(2) == Some(&"slurm"))
}

#[cfg(test)]
mod tests {
    use super::super::load_with_env;

    const SPEC: &str = r#"
[experiment]
name = "t"
seeds = [1, 2]

[model]
path = "m"

[[stage]]
id = "align"
kind = "train"
method = "sft"
lr = 1e-4

[[stage]]
id = "attack"
kind = "train"
method = "sft"
mix = [{ data = "a" }, { data = "b", ratio = 0.1 }]

[sweep]
"stage.align.method" = ["sft", "booster"]
"stage.attack.mix.1.ratio" = [0.0, 0.1, 0.2]

[[sweep.zip]]
"stage.align.lr" = [1e-4, 5e-4]
"stage.align.epochs" = [1, 2]
"#;

    #[test]
    fn grid_times_zip_times_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, SPEC).unwrap();
        let loaded = load_with_env(&p, &[], Vec::new()).unwrap();
        let runs = super::expand(&loaded).unwrap();
        assert_eq!(runs.len(), 2 * 3 * 2 * 2);
        let r = runs.iter().find(|r| r.params["stage.align.lr"].as_float() == Some(5e-4) && r.seed == 2).unwrap();
        assert_eq!(r.spec.stage[0].params["epochs"].as_integer(), Some(2));
        assert_eq!(r.spec.stage[0].params["lr"].as_float(), Some(5e-4));
        let ratios: std::collections::BTreeSet<String> =
            runs.iter().map(|r| r.spec.stage[1].params["mix"][1]["ratio"].to_string()).collect();
        assert_eq!(ratios.len(), 3);
    }

    #[test]
    fn resources_are_not_swept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        for key in ["\"slurm.time\" = [1, 2]", "\"stage.attack.slurm.gpus\" = [0, 1]"] {
            std::fs::write(&p, SPEC.replace("[[sweep.zip]]", &format!("{key}\n\n[[sweep.zip]]"))).unwrap();
            let loaded = load_with_env(&p, &[], Vec::new()).unwrap();
            let err = super::expand(&loaded).unwrap_err().to_string();
            assert!(err.contains("Slurm resources are not swept"), "{err}");
        }
    }
}
