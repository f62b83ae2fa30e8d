//! Reverse-mode automatic differentiation.
//!
//! Every op whose inputs track gradients records an `Op` naming its inputs. `backward` on a
//! scalar sorts the graph topologically (iteratively: deep graphs cannot overflow the stack),
//! then walks it from the output, applying each node's rule from `rules.rs` to turn the
//! gradient of its output into gradients of its inputs and adding them up (`+=`) per node.
//! Rules are written with tensor ops under [`no_grad`], so every backend gets backward for
//! free. Only leaves made with [`Tensor::variable`] keep their gradient in the [`GradStore`].

pub mod check;
mod rules;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Indices, Tensor, TensorId};

/// The op that produced a tensor, with what its backward rule needs.
#[derive(Clone)]
pub(crate) enum Op {
    Unary(Tensor, UnaryOp),
    Binary(Tensor, Tensor, BinaryOp),
    /// Reduction over `axis`, keeping it as size 1.
    Reduce(Tensor, ReduceOp, usize),
    Matmul {
        lhs: Tensor,
        rhs: Tensor,
        lhs_t: bool,
        rhs_t: bool,
    },
    Reshape(Tensor),
    Transpose(Tensor),
    IndexSelect(Tensor, Indices),
    Gather(Tensor, Indices),
    Concat(Vec<Tensor>, usize),
    Narrow {
        input: Tensor,
        axis: usize,
        start: usize,
    },
    Where {
        mask: Tensor,
        on_true: Tensor,
        on_false: Tensor,
    },
    Softmax(Tensor),
    LogSoftmax(Tensor),
    /// Fused shifted softmax-CE: the gradient w.r.t. the logits for a unit upstream
    /// gradient (already scaled by the reduction), computed in the forward pass.
    ShiftedXent {
        logits: Tensor,
        unit_grad: Tensor,
    },
    /// Fused linear layer + shifted softmax-CE: the gradients of the weight and bias for a
    /// unit upstream gradient, computed in the forward pass.
    LinearXent {
        weight: Tensor,
        bias: Option<Tensor>,
        grad_w: Tensor,
        /// Present exactly when `bias` is.
        grad_b: Option<Tensor>,
    },
}

/// The name of every op kind, so that a test can insist each one has a gradient check.
pub const OP_NAMES: &[&str] = &[
    "neg",
    "exp",
    "log",
    "tanh",
    "relu",
    "sigmoid",
    "sqrt",
    "square",
    "recip",
    "step",
    "affine",
    "powf",
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "eq",
    "sum",
    "max",
    "matmul",
    "reshape",
    "transpose",
    "index_select",
    "gather",
    "concat",
    "narrow",
    "where",
    "softmax",
    "log_softmax",
    "shifted_cross_entropy",
    "linear_shifted_cross_entropy",
];

impl Op {
    /// This op's entry in [`OP_NAMES`].
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Unary(_, u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Relu => "relu",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Square => "square",
                UnaryOp::Recip => "recip",
                UnaryOp::Step => "step",
                UnaryOp::Affine { .. } => "affine",
                UnaryOp::Powf(_) => "powf",
            },
            Op::Binary(_, _, b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Maximum => "maximum",
                BinaryOp::Eq => "eq",
            },
            Op::Reduce(_, ReduceOp::Sum, _) => "sum",
            Op::Reduce(_, ReduceOp::Max, _) => "max",
            Op::Matmul { .. } => "matmul",
            Op::Reshape(_) => "reshape",
            Op::Transpose(_) => "transpose",
            Op::IndexSelect(..) => "index_select",
            Op::Gather(..) => "gather",
            Op::Concat(..) => "concat",
            Op::Narrow { .. } => "narrow",
            Op::Where { .. } => "where",
            Op::Softmax(_) => "softmax",
            Op::LogSoftmax(_) => "log_softmax",
            Op::ShiftedXent { .. } => "shifted_cross_entropy",
            Op::LinearXent { .. } => "linear_shifted_cross_entropy",
        }
    }

    /// The tensors this op read that may need gradients.
    pub(crate) fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(x, _)
            | Op::Reduce(x, _, _)
            | Op::Reshape(x)
            | Op::Transpose(x)
            | Op::IndexSelect(x, _)
            | Op::Gather(x, _)
            | Op::Softmax(x)
            | Op::LogSoftmax(x)
            | Op::Narrow { input: x, .. }
            | Op::ShiftedXent { logits: x, .. } => vec![x],
            Op::Binary(a, b, _) | Op::Matmul { lhs: a, rhs: b, .. } => vec![a, b],
            Op::Concat(xs, _) => xs.iter().collect(),
            Op::LinearXent { weight, bias, .. } => std::iter::once(weight).chain(bias).collect(),
            Op::Where {
                on_true, on_false, ..
            } => vec![on_true, on_false],
        }
    }
}

thread_local! {
    static GRAD_DISABLED: Cell<u32> = const { Cell::new(0) };
}

/// Whether ops record the graph on this thread.
pub fn grad_enabled() -> bool {
    GRAD_DISABLED.with(|d| d.get() == 0)
}

/// While alive, ops on this thread record no graph (evaluation, optimizer steps, rules).
pub struct NoGradGuard(());

impl NoGradGuard {
    pub fn new() -> Self {
        GRAD_DISABLED.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_DISABLED.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f` without recording a graph.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Gradients of the variables reached by one `backward` call, keyed by tensor id.
#[derive(Default)]
pub struct GradStore(HashMap<TensorId, Tensor>);

impl GradStore {
    /// The gradient of `t`, if `t` is a variable the loss depends on.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }

    /// The gradient of `t`, or an error naming it.
    pub fn require(&self, t: &Tensor) -> Result<&Tensor> {
        self.get(t)
            .ok_or_else(|| Error::Autograd(format!("no gradient for {t:?}")))
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Nodes reachable from `root` through tracking tensors, each after all its consumers
/// (reverse topological order), by an iterative depth-first search.
fn reverse_topological(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    // (node, children pushed?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            order.push(node);
            continue;
        }
        if !visited.insert(node.id()) {
            continue;
        }
        stack.push((node.clone(), true));
        if let Some(op) = node.op() {
            for input in op.inputs() {
                if input.tracks_grad() && !visited.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order.reverse();
    order
}

impl Tensor {
    /// Gradients of this scalar with respect to every variable it depends on.
    pub fn backward(&self) -> Result<GradStore> {
        if self.elem_count() != 1 {
            return Err(Error::Autograd(format!(
                "backward needs a scalar, got shape {:?}",
                self.dims()
            )));
        }
        if !self.tracks_grad() {
            return Err(Error::Autograd(
                "backward on a tensor that depends on no variable".into(),
            ));
        }
        let _guard = NoGradGuard::new();
        let order = reverse_topological(self);
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(
            self.id(),
            Tensor::ones(self.shape().clone(), self.device())?,
        );
        let mut store = GradStore::default();
        let root = self.id();
        for node in order {
            let Some(grad) = grads.remove(&node.id()) else {
                continue;
            };
            match node.op() {
                Some(op) => {
                    // The root's gradient is exactly 1: rules may skip multiplying by it.
                    let unit = node.id() == root;
                    for (input, g) in rules::backward(op, &node, &grad, unit)? {
                        if !input.tracks_grad() {
                            continue;
                        }
                        let acc = match grads.remove(&input.id()) {
                            Some(prev) => prev.add(&g)?,
                            None => g,
                        };
                        grads.insert(input.id(), acc);
                    }
                }
                None => {
                    if node.is_variable() {
                        store.0.insert(node.id(), grad);
                    }
                }
            }
        }
        Ok(store)
    }
}

/// Every op name that appears in the graph below `root` (for coverage checks).
pub fn op_names_in_graph(root: &Tensor) -> Vec<&'static str> {
    reverse_topological(root)
        .iter()
        .filter_map(|t| t.op().map(Op::name))
        .collect()
}
