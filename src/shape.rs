//! Shapes: row-major, contiguous, any rank (rank 0 is a scalar).
//!
//! Broadcasting follows NumPy: shapes are aligned on the right, and each pair of dimensions
//! must be equal or one of them 1. It is always *explicit* in the op surface
//! (`broadcast_add`, ...): the plain `add` insists on equal shapes.

use crate::error::{Error, Result};

/// The dimensions of a tensor.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Shape {
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// `(rows, cols)` of a rank-2 shape.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0.as_slice() {
            &[r, c] => Ok((r, c)),
            d => Err(Error::bad_shape(op, d, "expected a matrix (rank 2)")),
        }
    }

    /// The shape viewed as `(outer, dims[axis], inner)`.
    pub fn split_at_axis(&self, axis: usize) -> (usize, usize, usize) {
        let outer = self.0[..axis].iter().product();
        let inner = self.0[axis + 1..].iter().product();
        (outer, self.0[axis], inner)
    }

    /// Checks `axis < rank`.
    pub fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis >= self.rank() {
            return Err(Error::bad_shape(
                op,
                &self.0,
                format!("axis {axis} out of range for rank {}", self.rank()),
            ));
        }
        Ok(())
    }

    /// This shape with `dims[axis]` replaced by 1.
    pub fn with_axis_one(&self, axis: usize) -> Shape {
        let mut d = self.0.clone();
        d[axis] = 1;
        Shape(d)
    }

    /// This shape without dimension `axis`.
    pub fn without_axis(&self, axis: usize) -> Shape {
        let mut d = self.0.clone();
        d.remove(axis);
        Shape(d)
    }

    /// The NumPy broadcast of two shapes.
    pub fn broadcast(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(rhs.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let l = dim_from_right(&self.0, rank - 1 - i);
            let r = dim_from_right(&rhs.0, rank - 1 - i);
            *o = match (l, r) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::shape_detail(
                        op,
                        &self.0,
                        &rhs.0,
                        "dimensions must be equal or 1 (NumPy broadcasting)",
                    ))
                }
            };
        }
        Ok(Shape(out))
    }

    /// Element strides of this shape when broadcast to `out` (0 on broadcast dimensions),
    /// aligned with `out`'s dimensions.
    pub fn broadcast_strides(&self, out: &Shape) -> Vec<usize> {
        let rank = out.rank();
        let mut strides = vec![0; rank];
        let mut stride = 1;
        for i in (0..rank).rev() {
            let from_right = rank - 1 - i;
            if from_right < self.rank() {
                let d = self.0[self.rank() - 1 - from_right];
                strides[i] = if d == 1 && out.0[i] != 1 { 0 } else { stride };
                stride *= d;
            }
        }
        strides
    }
}

fn dim_from_right(dims: &[usize], k: usize) -> usize {
    if k < dims.len() {
        dims[dims.len() - 1 - k]
    } else {
        1
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize, usize)> for Shape {
    fn from((a, b): (usize, usize)) -> Self {
        Shape(vec![a, b])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from((a, b, c): (usize, usize, usize)) -> Self {
        Shape(vec![a, b, c])
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        let a = Shape::from((4, 3));
        assert_eq!(a.broadcast(&Shape::from(3), "t").unwrap(), a);
        assert_eq!(a.broadcast(&Shape::from((4, 1)), "t").unwrap(), a);
        assert!(a.broadcast(&Shape::from(4), "t").is_err());
        assert_eq!(Shape::from(3).broadcast_strides(&a), vec![0, 1]);
        assert_eq!(Shape::from((4, 1)).broadcast_strides(&a), vec![1, 0]);
        assert_eq!(Shape::from(()).broadcast_strides(&a), vec![0, 0]);
    }
}
