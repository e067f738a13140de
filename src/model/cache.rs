//! Key/value cache and the attention mask it implies.

use candle_core::{Device, Tensor};

/// Large negative additive mask value: finite so fully masked rows (left padding) stay NaN-free.
const MASKED: f32 = -1e9;

/// Per-layer keys and values of the tokens seen so far, plus which of them are padding.
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[B][S]`: true where the cached token is real (not padding).
    pub valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), valid: vec![Vec::new(); batch] }
    }

    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache of `batch` rows, each a copy of this cache's first row (a shared prefix).
    pub fn repeat(&self, batch: usize) -> candle_core::Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|(k, v)| {
                        let copies = |t: &Tensor| t.narrow(0, 0, 1)?.repeat((batch, 1, 1, 1));
                        Ok((copies(k)?, copies(v)?))
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        let row = self.valid.first().cloned().unwrap_or_default();
        Ok(Self { layers, valid: vec![row; batch] })
    }

    /// A cache whose row `r` is this cache's row `rows[r]`.
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        let device = match self.layers.iter().flatten().next() {
            Some((k, _)) => k.device().clone(),
            None => {
                return Ok(Self {
                    layers: self.layers.iter().map(|_| None).collect(),
                    valid: rows.iter().map(|&r| self.valid[r].clone()).collect(),
                })
            }
        };
        let index = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((k.index_select(&index, 0)?, v.index_select(&index, 0)?))).transpose())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, valid: rows.iter().map(|&r| self.valid[r].clone()).collect() })
    }

    /// Appends keys/values `[B, KV, T, D]` for layer `i`; returns the full keys and values.
    pub fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = match self.layers[i].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.layers[i] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// Additive mask `[B, 1, T, past+T]`: query t (absolute index past+t) sees key s when s <= past+t
/// and key s is not padding.
pub fn causal_padding_mask(past_valid: &[Vec<bool>], new_valid: &[Vec<bool>], device: &Device) -> candle_core::Result<Tensor> {
    let b = new_valid.len();
    let t = new_valid.first().map_or(0, Vec::len);
    let past = past_valid.first().map_or(0, Vec::len);
    let s = past + t;
    let mut data = Vec::with_capacity(b * t * s);
    for row in 0..b {
        let key_ok = |j: usize| {
            if j < past {
                past_valid[row][j]
            } else {
                new_valid[row][j - past]
            }
        };
        for q in 0..t {
            for j in 0..s {
                data.push(if j <= past + q && key_ok(j) { 0.0 } else { MASKED });
            }
        }
    }
    Tensor::from_vec(data, (b, 1, t, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_rows_copy_keys_values_and_validity() {
        let k = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((2, 1, 2, 2)).unwrap();
        let mut c = KvCache::new(1, 2);
        c.append(0, k.clone(), (&k * 2.0).unwrap()).unwrap();
        c.valid = vec![vec![true, true], vec![false, true]];
        let s = c.select_rows(&[1, 1, 0]).unwrap();
        let (sk, sv) = s.layers[0].as_ref().unwrap();
        assert_eq!(sk.dims(), [3, 1, 2, 2]);
        assert_eq!(sk.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [4., 5., 6., 7., 4., 5., 6., 7., 0., 1., 2., 3.]);
        assert_eq!(sv.get(2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 2., 4., 6.]);
        assert_eq!(s.valid, [vec![false, true], vec![false, true], vec![true, true]]);
    }

    #[test]
    fn mask_combines_causality_and_padding() {
        let m = causal_padding_mask(&[vec![false, true]], &[vec![true, true]], &Device::Cpu).unwrap();
        let rows = m.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(rows[0][0], vec![MASKED, 0.0, 0.0, MASKED]);
        assert_eq!(rows[0][1], vec![MASKED, 0.0, 0.0, 0.0]);
    }
}
