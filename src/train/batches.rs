//! Training data beyond single sequences: the item types a trainer step can be made of, how
//! items collate into batches, and the sources that hand the trainer each step's micro-batches.
//!
//! - [`Example`] → [`TrainBatch`]: single sequences (SFT).
//! - [`ResponsePair`] → [`PairBatch`]: two responses to the same prompt, preferred and rejected
//!   (DPO's chosen/rejected; RepNoise's harmless/harmful answers in its paired mode).
//! - [`EpochBatches`]: transformers' Trainer order (seeded shuffle per epoch, steps of
//!   `batch_size * grad_accum`, micro-batches of `batch_size`).
//! - [`Stream`]: a loader of its own with its own batch size and order (sequential and cycling,
//!   shuffled and cycling, or a fresh random batch per draw); [`StreamSteps`] steps through several
//!   streams at once (unlearning's forget and retain streams), one batch of each per step.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::loss::TrainBatch;
use super::trainer::{total_steps, Example, TrainerConfig};

/// Something a batch can be made of.
pub trait TrainItem {
    type Batch;
    fn collate(items: &[&Self]) -> Self::Batch;
}

/// What the trainer needs to know of a batch.
pub trait Batch {
    /// Supervised targets (a batch without any is skipped).
    fn num_targets(&self) -> usize;
    /// Tokens processed (for throughput).
    fn num_tokens(&self) -> usize;
}

impl TrainItem for Example {
    type Batch = TrainBatch;
    fn collate(items: &[&Self]) -> TrainBatch {
        TrainBatch {
            input_ids: items.iter().map(|e| e.input_ids.clone()).collect(),
            labels: items.iter().map(|e| e.labels.clone()).collect(),
        }
    }
}

impl Batch for TrainBatch {
    fn num_targets(&self) -> usize {
        TrainBatch::num_targets(self)
    }
    fn num_tokens(&self) -> usize {
        self.input_ids.iter().map(Vec::len).sum()
    }
}

/// Two responses to one prompt, each a full sequence with the prompt masked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsePair {
    pub preferred: Example,
    pub rejected: Example,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairBatch {
    pub preferred: TrainBatch,
    pub rejected: TrainBatch,
}

impl TrainItem for ResponsePair {
    type Batch = PairBatch;
    fn collate(items: &[&Self]) -> PairBatch {
        PairBatch {
            preferred: Example::collate(&items.iter().map(|p| &p.preferred).collect::<Vec<_>>()),
            rejected: Example::collate(&items.iter().map(|p| &p.rejected).collect::<Vec<_>>()),
        }
    }
}

impl Batch for PairBatch {
    /// A pair batch trains when both sides have targets.
    fn num_targets(&self) -> usize {
        if self.rejected.num_targets() == 0 {
            0
        } else {
            self.preferred.num_targets()
        }
    }
    fn num_tokens(&self) -> usize {
        self.preferred.num_tokens() + self.rejected.num_tokens()
    }
}

/// One batch from each of several streams.
impl<B: Batch> Batch for Vec<B> {
    fn num_targets(&self) -> usize {
        self.iter().map(Batch::num_targets).sum()
    }
    fn num_tokens(&self) -> usize {
        self.iter().map(Batch::num_tokens).sum()
    }
}

/// The micro-batches of one optimizer step.
pub struct Step<B> {
    pub epoch: usize,
    pub micro_batches: Vec<B>,
}

/// Hands the trainer its steps.
pub trait BatchSource {
    type Batch: Batch;
    /// Optimizer steps the source will yield at most (the learning-rate schedule's length).
    fn total_steps(&self) -> usize;
    /// The next step's micro-batches; `None` when the data is exhausted.
    fn next_step(&mut self) -> Option<Step<Self::Batch>>;
}

/// transformers' Trainer order: every epoch a seeded shuffle of all items, cut into steps of
/// `batch_size * grad_accum` and micro-batches of `batch_size`; micro-batches without a target
/// are dropped, steps without any are skipped.
pub struct EpochBatches<'a, E: TrainItem> {
    items: &'a [E],
    batch_size: usize,
    per_step: usize,
    epochs: usize,
    total: usize,
    rng: StdRng,
    epoch: usize,
    order: Vec<usize>,
    at: usize,
}

impl<'a, E: TrainItem> EpochBatches<'a, E> {
    pub fn new(items: &'a [E], cfg: &TrainerConfig) -> Self {
        let batch_size = cfg.batch_size.max(1);
        Self {
            items,
            batch_size,
            per_step: batch_size * cfg.grad_accum.max(1),
            epochs: cfg.epochs,
            total: total_steps(items.len(), cfg),
            rng: StdRng::seed_from_u64(cfg.seed),
            epoch: 0,
            order: Vec::new(),
            at: usize::MAX,
        }
    }
}

impl<E: TrainItem> BatchSource for EpochBatches<'_, E>
where
    E::Batch: Batch,
{
    type Batch = E::Batch;

    fn total_steps(&self) -> usize {
        self.total
    }

    fn next_step(&mut self) -> Option<Step<E::Batch>> {
        loop {
            if self.at >= self.order.len() {
                if self.at != usize::MAX {
                    self.epoch += 1;
                }
                if self.epoch >= self.epochs {
                    return None;
                }
                self.order = (0..self.items.len()).collect();
                self.order.shuffle(&mut self.rng);
                self.at = 0;
                if self.order.is_empty() {
                    return None;
                }
            }
            let end = (self.at + self.per_step).min(self.order.len());
            let chunk = &self.order[self.at..end];
            self.at = end;
            let micro_batches: Vec<E::Batch> = chunk
                .chunks(self.batch_size)
                .map(|idx| E::collate(&idx.iter().map(|&i| &self.items[i]).collect::<Vec<_>>()))
                .filter(|b| b.num_targets() > 0)
                .collect();
            if !micro_batches.is_empty() {
                return Some(Step { epoch: self.epoch, micro_batches });
            }
        }
    }
}

/// How a [`Stream`] orders its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// File order, cycling (unlearning's forget stream: `shuffle=False`).
    Sequential,
    /// A seeded shuffle, reshuffled at every pass (a cycling loader with a random sampler).
    Shuffled,
    /// A fresh random batch at every draw (`next(iter(loader))` with a random sampler, as the
    /// official RepNoise trainer draws its harmful batch).
    Resampled,
}

/// A loader of its own, cycling through its items; the last batch of a pass may be smaller.
pub struct Stream<E> {
    items: Vec<E>,
    order_kind: Order,
    order: Vec<usize>,
    at: usize,
    batch_size: usize,
    rng: StdRng,
    /// Batches drawn so far: a step checkpoint saves it and [`Stream::replay`] restores it.
    draws: usize,
}

impl<E: TrainItem> Stream<E> {
    pub fn new(items: Vec<E>, batch_size: usize, order: Order, seed: u64) -> Self {
        let mut me = Self {
            order: Vec::new(),
            at: 0,
            batch_size: batch_size.max(1),
            order_kind: order,
            rng: StdRng::seed_from_u64(seed),
            items,
            draws: 0,
        };
        me.restart();
        me
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn restart(&mut self) {
        self.order = (0..self.items.len()).collect();
        if self.order_kind != Order::Sequential {
            self.order.shuffle(&mut self.rng);
        }
        self.at = 0;
    }

    /// Batches drawn so far.
    pub fn draws(&self) -> usize {
        self.draws
    }

    /// Draws (and drops) batches until `draws` have been drawn: the stream as it was after them.
    pub fn replay(&mut self, draws: usize) {
        while self.draws < draws {
            self.next_batch();
        }
    }

    pub fn next_batch(&mut self) -> E::Batch {
        self.draws += 1;
        if self.at >= self.order.len() || self.order_kind == Order::Resampled {
            self.restart();
        }
        let end = (self.at + self.batch_size).min(self.order.len());
        let idx = &self.order[self.at..end];
        self.at = end;
        E::collate(&idx.iter().map(|&i| &self.items[i]).collect::<Vec<_>>())
    }
}

/// Several streams stepped together: every step is one micro-batch holding one batch of each
/// stream, in the order given; `steps` optimizer steps in all.
pub struct StreamSteps<E> {
    pub streams: Vec<Stream<E>>,
    steps: usize,
    done: usize,
}

impl<E: TrainItem> StreamSteps<E> {
    pub fn new(streams: Vec<Stream<E>>, steps: usize) -> Self {
        Self { streams, steps, done: 0 }
    }
}

impl<E: TrainItem> BatchSource for StreamSteps<E>
where
    E::Batch: Batch,
{
    type Batch = Vec<E::Batch>;

    fn total_steps(&self) -> usize {
        self.steps
    }

    fn next_step(&mut self) -> Option<Step<Vec<E::Batch>>> {
        if self.done >= self.steps || self.streams.iter().any(Stream::is_empty) {
            return None;
        }
        self.done += 1;
        Some(Step { epoch: 0, micro_batches: vec![self.streams.iter_mut().map(Stream::next_batch).collect()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: u32) -> Example {
        Example { input_ids: vec![id, id], labels: vec![-100, id as i64] }
    }

    fn firsts(b: &TrainBatch) -> Vec<u32> {
        b.input_ids.iter().map(|s| s[0]).collect()
    }

    #[test]
    fn epoch_batches_cover_every_item_once_per_epoch() {
        let items: Vec<Example> = (0..10).map(ex).collect();
        let cfg = TrainerConfig { epochs: 2, batch_size: 2, grad_accum: 2, seed: 7, ..Default::default() };
        let mut src = EpochBatches::new(&items, &cfg);
        assert_eq!(src.total_steps(), 6);
        let mut seen = vec![Vec::new(); 2];
        while let Some(step) = src.next_step() {
            assert!(step.micro_batches.len() <= 2);
            for mb in &step.micro_batches {
                seen[step.epoch].extend(firsts(mb));
            }
        }
        for epoch in &mut seen {
            epoch.sort();
            assert_eq!(*epoch, (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn streams_cycle_in_their_own_order_and_batch_size() {
        let items: Vec<Example> = (0..5).map(ex).collect();
        let mut seq = Stream::new(items.clone(), 2, Order::Sequential, 1);
        let got: Vec<Vec<u32>> = (0..4).map(|_| firsts(&seq.next_batch())).collect();
        assert_eq!(got, vec![vec![0, 1], vec![2, 3], vec![4], vec![0, 1]]);
        let mut shuffled = Stream::new(items.clone(), 5, Order::Shuffled, 1);
        let mut a = firsts(&shuffled.next_batch());
        a.sort();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        // Resampled: every draw is a full batch of distinct items, drawn afresh.
        let mut fresh = Stream::new(items, 3, Order::Resampled, 1);
        let draws: Vec<Vec<u32>> = (0..6).map(|_| firsts(&fresh.next_batch())).collect();
        assert!(draws.iter().all(|d| d.len() == 3 && d.iter().collect::<std::collections::HashSet<_>>().len() == 3));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn a_replayed_stream_continues_where_the_original_is() {
        for order in [Order::Sequential, Order::Shuffled, Order::Resampled] {
            let items: Vec<Example> = (0..5).map(ex).collect();
            let mut original = Stream::new(items.clone(), 2, order, 7);
            for _ in 0..4 {
                original.next_batch();
            }
            let mut replayed = Stream::new(items, 2, order, 7);
            replayed.replay(original.draws());
            assert_eq!(replayed.draws(), 4);
            for _ in 0..6 {
                assert_eq!(firsts(&replayed.next_batch()), firsts(&original.next_batch()), "{order:?}");
            }
        }
    }

    #[test]
    fn stream_steps_take_one_batch_of_each_stream_per_step() {
        let forget = Stream::new((0..3).map(ex).collect(), 1, Order::Sequential, 0);
        let retain = Stream::new((10..18).map(ex).collect(), 4, Order::Shuffled, 0);
        let mut steps = StreamSteps::new(vec![forget, retain], 4);
        let mut forget_seen = Vec::new();
        while let Some(step) = steps.next_step() {
            let [both] = step.micro_batches.as_slice() else { panic!("one micro-batch per step") };
            assert_eq!(both.len(), 2);
            assert_eq!(both[1].input_ids.len(), 4);
            forget_seen.extend(firsts(&both[0]));
        }
        assert_eq!(forget_seen, vec![0, 1, 2, 0]);
    }

    #[test]
    fn pairs_collate_side_by_side_and_need_targets_on_both_sides() {
        let p = ResponsePair { preferred: ex(1), rejected: ex(2) };
        let b = ResponsePair::collate(&[&p, &p]);
        assert_eq!((firsts(&b.preferred), firsts(&b.rejected)), (vec![1, 1], vec![2, 2]));
        assert_eq!(b.num_targets(), 2);
        let cut = ResponsePair { preferred: ex(1), rejected: Example { input_ids: vec![2], labels: vec![-100] } };
        assert_eq!(ResponsePair::collate(&[&cut]).num_targets(), 0);
    }
}
