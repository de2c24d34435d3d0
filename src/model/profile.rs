//! Per-node timing of the backbone, for `gradgate bench --nodes` and docs/benchmarks.md.
//!
//! tract's plan runs nodes one after another; [`Model::profile_backbone`] runs the same plan
//! with an evaluation hook that times each node. The hook adds one `Instant::now()` pair per
//! node (about 50 ns on the development machine, against 10 µs to 2 ms per node), so the
//! per-node times add up to the backbone's time within a fraction of a percent.

use super::{InferenceError, Model};
use crate::tensor::InputTensor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

/// Time one backbone node took in [`Model::profile_backbone`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The node's name in the optimized graph: usually the ONNX node it came from, with a
    /// suffix for each node tract split it into.
    pub name: String,
    /// tract's operator name after optimization, e.g. `Conv`, `OptMatMul`,
    /// `QuantizeLinearI8`.
    pub op: String,
    /// Wall time of the node's evaluation.
    pub elapsed: Duration,
}

impl Model {
    /// Runs the backbone on `input` like [`Model::run_backbone`] and returns each node's time
    /// in plan order. Source and constant nodes are included (they take almost nothing).
    ///
    /// Allocates: one entry per node. Meant for profiling, not for the frame loop. The
    /// features of this run stay available to [`Model::copy_features`].
    pub fn profile_backbone(
        &mut self,
        input: &InputTensor,
    ) -> Result<Vec<NodeTime>, InferenceError> {
        self.fill_input(input)?;
        let mut times = Vec::with_capacity(self.info.backbone_nodes);
        let outputs = self
            .state
            .run_plan_with_eval(
                tvec!(TValue::from_const(Arc::clone(&self.input))),
                |session, state, node, inputs| {
                    let started = Instant::now();
                    let result = eval(session, state, node, inputs);
                    times.push(NodeTime {
                        name: node.name.clone(),
                        op: node.op().name().into_owned(),
                        elapsed: started.elapsed(),
                    });
                    result
                },
            )
            .map_err(InferenceError::tract)?;
        self.outputs = outputs;
        Ok(times)
    }
}

/// Total time per operator, largest first: (operator, node count, total time).
pub fn time_by_op(times: &[NodeTime]) -> Vec<(String, usize, Duration)> {
    let mut by_op: Vec<(String, usize, Duration)> = Vec::new();
    for t in times {
        match by_op.iter_mut().find(|(op, _, _)| *op == t.op) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += t.elapsed;
            }
            None => by_op.push((t.op.clone(), 1, t.elapsed)),
        }
    }
    by_op.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    by_op
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, micros: u64) -> NodeTime {
        NodeTime {
            name: format!("{op}-{micros}"),
            op: op.into(),
            elapsed: Duration::from_micros(micros),
        }
    }

    #[test]
    fn time_by_op_sums_and_sorts() {
        let times = [
            node("Conv", 10),
            node("Add", 3),
            node("Conv", 5),
            node("Add", 1),
        ];
        let by_op = time_by_op(&times);
        assert_eq!(
            by_op,
            vec![
                ("Conv".to_string(), 2, Duration::from_micros(15)),
                ("Add".to_string(), 2, Duration::from_micros(4)),
            ]
        );
    }

    #[test]
    fn time_by_op_of_nothing_is_empty() {
        assert!(time_by_op(&[]).is_empty());
    }
}
