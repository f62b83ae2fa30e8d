//! Launch plans: which kernel variant and which grid each op uses, decided from the shape
//! alone (never from device properties), so that every GPU runs the same reduction trees and
//! produces the same bits. Pure functions, unit-tested without a GPU.
//!
//! - Grid-stride kernels get `min(ceil(work / per_block), 65535)` blocks (at least one).
//! - Broadcasts are coalesced to at most 4 dimensions (the kernel's limit): size-1 output
//!   dimensions are dropped and neighbouring dimensions that are contiguous in both operands
//!   are merged; any leading dimensions beyond 4 become a host loop of launches.
//! - Reductions over `(outer, len, inner)`: one warp per row (`inner == 1`, `len <= 2048`),
//!   one block per row (`inner == 1`, longer rows), column tiles otherwise, split in two
//!   stages along `len` when few column tiles would each walk a long axis.
//! - Fused cross-entropy: `xent.rs`, next to its kernel-selection table.
//! - GEMM: the thin kernels when `n <= 16`; when `m <= 16` the transposed product
//!   `Cᵀ = op(B)ᵀ op(A)ᵀ` through the thin kernels followed by a transpose; otherwise the
//!   128×128 tile kernel when it makes at least [`TILED_128_MIN_TILES`] tiles, else 64×64
//!   tiles (the two are bitwise identical).

/// A launch's grid or block dimensions (CUDA's `dim3`).
pub(super) type Dim3 = (u32, u32, u32);

/// Grid limit for the x dimension of grid-stride kernels and for the y dimension of any grid.
pub(super) const MAX_GRID: usize = 65535;

/// `min(ceil(work / per_block), 65535)`, at least 1: blocks for a grid-stride kernel.
pub(super) fn grid_stride_blocks(work: usize, per_block: usize) -> u32 {
    work.div_ceil(per_block.max(1)).clamp(1, MAX_GRID) as u32
}

/// Smallest power of two `>= n` (1 for `n <= 1`).
pub(super) fn next_pow2(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// A broadcast binary op reduced to at most four dimensions per launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BroadcastPlan {
    /// Coalesced output dimensions (outermost first, none of size 1 unless the output has one
    /// element); the output is contiguous over them.
    pub dims: Vec<usize>,
    /// Element strides of each operand over `dims` (0 on broadcast dimensions).
    pub lhs_strides: Vec<usize>,
    pub rhs_strides: Vec<usize>,
}

impl BroadcastPlan {
    /// Plans `out = op(lhs, rhs)` from each operand's broadcast strides (aligned with
    /// `out_dims`, as [`crate::shape::Shape::broadcast_strides`] gives them).
    pub fn new(out_dims: &[usize], lhs_strides: &[usize], rhs_strides: &[usize]) -> Self {
        let mut dims: Vec<usize> = Vec::new();
        let mut ls: Vec<usize> = Vec::new();
        let mut rs: Vec<usize> = Vec::new();
        for ((&d, &a), &b) in out_dims.iter().zip(lhs_strides).zip(rhs_strides) {
            if d == 1 {
                continue;
            }
            if let (Some(pd), Some(pa), Some(pb)) = (dims.last_mut(), ls.last_mut(), rs.last_mut())
            {
                // The outer dimension steps over exactly one inner block in both operands:
                // the pair is one dimension of size pd * d.
                if *pa == a * d && *pb == b * d {
                    *pd *= d;
                    *pa = a;
                    *pb = b;
                    continue;
                }
            }
            dims.push(d);
            ls.push(a);
            rs.push(b);
        }
        if dims.is_empty() {
            dims.push(1);
            ls.push(0);
            rs.push(0);
        }
        BroadcastPlan {
            dims,
            lhs_strides: ls,
            rhs_strides: rs,
        }
    }

    /// Number of leading dimensions handled by a host loop (rank beyond 4).
    pub fn outer_rank(&self) -> usize {
        self.dims.len().saturating_sub(4)
    }

    /// The last (at most) four dimensions, left-padded to four with size 1 and stride 0:
    /// `(dims, lhs strides, rhs strides)` for one launch.
    pub fn inner4(&self) -> ([usize; 4], [usize; 4], [usize; 4]) {
        let r = self.outer_rank();
        let mut d = [1usize; 4];
        let mut a = [0usize; 4];
        let mut b = [0usize; 4];
        let k = self.dims.len() - r;
        for i in 0..k {
            d[4 - k + i] = self.dims[r + i];
            a[4 - k + i] = self.lhs_strides[r + i];
            b[4 - k + i] = self.rhs_strides[r + i];
        }
        (d, a, b)
    }

    /// For each launch: element offsets into (lhs, rhs, out), in output order.
    pub fn launches(&self) -> Vec<(usize, usize, usize)> {
        let r = self.outer_rank();
        let inner: usize = self.dims[r..].iter().product();
        let outer: usize = self.dims[..r].iter().product();
        let mut out = Vec::with_capacity(outer);
        let mut idx = vec![0usize; r];
        for o in 0..outer {
            let la = idx.iter().zip(&self.lhs_strides).map(|(i, s)| i * s).sum();
            let lb = idx.iter().zip(&self.rhs_strides).map(|(i, s)| i * s).sum();
            out.push((la, lb, o * inner));
            for d in (0..r).rev() {
                idx[d] += 1;
                if idx[d] < self.dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// Which kernel of an axis reduction over `(outer, len, inner)` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReduceVariant {
    /// `inner == 1`: one warp per row; grid blocks of 256 threads.
    Warp,
    /// `inner == 1`, long rows: one 256-thread block per row.
    Block,
    /// Column tiles, grid `(ceil(inner/32), min(outer, 65535), z)`; `z > 1` writes `z` partial
    /// slabs that a second launch over `(1, z, outer*inner)` reduces.
    Cols,
}

/// Rows up to this length use one warp per row.
const WARP_MAX_LEN: usize = 2048;

/// The variant and grid of a reduction over `(outer, len, inner)`.
pub(super) fn reduce_plan(outer: usize, len: usize, inner: usize) -> (ReduceVariant, Dim3) {
    if inner == 1 && len <= WARP_MAX_LEN {
        return (ReduceVariant::Warp, (grid_stride_blocks(outer, 8), 1, 1));
    }
    if inner == 1 {
        return (ReduceVariant::Block, (grid_stride_blocks(outer, 1), 1, 1));
    }
    let tiles = inner.div_ceil(32);
    // Few column tiles walking a long axis leave the GPU idle: split the axis.
    let z = match len >= WARP_MAX_LEN && tiles * outer < 1024 {
        true => (len / 1024).clamp(1, 256),
        false => 1,
    };
    let grid = (tiles as u32, outer.clamp(1, MAX_GRID) as u32, z as u32);
    (ReduceVariant::Cols, grid)
}

/// Which softmax (and fallback cross-entropy) variant handles rows of `cols` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowVariant {
    /// `cols <= 32`: several rows per warp.
    SmallC,
    /// `32 < cols <= 1024`: one warp per row.
    WarpRow,
    /// `cols > 1024`: one 256-thread block per row.
    BlockRow,
}

pub(super) fn row_variant(cols: usize) -> RowVariant {
    if cols <= 32 {
        RowVariant::SmallC
    } else if cols <= 1024 {
        RowVariant::WarpRow
    } else {
        RowVariant::BlockRow
    }
}

/// Blocks for a row kernel of [`row_variant`]`(cols)` (softmax.cu, xent.cu's fallbacks):
/// 8 warps a block, each taking a row, or for small C `32 / next_pow2(C)` rows `sets` times
/// over (softmax: [`SOFTMAX_BATCH`]; cross-entropy: 1); a block a row over 1024 columns.
pub(super) fn row_blocks(rows: usize, cols: usize, sets: usize) -> u32 {
    match row_variant(cols) {
        RowVariant::SmallC => grid_stride_blocks(rows, 8 * sets * (32 / next_pow2(cols))),
        RowVariant::WarpRow => grid_stride_blocks(rows, 8),
        RowVariant::BlockRow => grid_stride_blocks(rows, 1),
    }
}

/// Row sets per warp of the small-C softmax kernels (`SOFTMAX_BATCH` in softmax.cu).
pub(super) const SOFTMAX_BATCH: usize = 4;

/// `sum_all` reads up to this many elements in one block; longer inputs go through 512
/// fixed partial sums first.
pub(super) const SUM_ONE_BLOCK_MAX: usize = 65536;
/// The fixed number of partial sums of the two-stage `sum_all` (independent of the device).
pub(super) const SUM_PARTIALS: usize = 512;

/// The 128×128 tile kernel is used when it makes at least this many tiles (about one wave
/// of an A100/H100/H200; both tile kernels give identical bits, so this only affects speed).
pub(super) const TILED_128_MIN_TILES: usize = 132;
/// Largest output width (or height, transposed) of the thin GEMM kernels.
pub(super) const THIN_MAX: usize = 16;

/// Which GEMM kernel computes an `m × n` product with inner dimension `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GemmPlan {
    /// `n <= 16`: the thin kernels on `C` directly.
    Thin,
    /// `m <= 16 < n`: the thin kernels on `Cᵀ = op(B)ᵀ op(A)ᵀ`, then a transpose.
    ThinTransposed,
    /// 128×128 tiles.
    Tiled128,
    /// 64×64 tiles.
    Tiled64,
}

pub(super) fn gemm_plan(m: usize, n: usize) -> GemmPlan {
    if n <= THIN_MAX {
        GemmPlan::Thin
    } else if m <= THIN_MAX {
        GemmPlan::ThinTransposed
    } else if m.div_ceil(128) * n.div_ceil(128) >= TILED_128_MIN_TILES {
        GemmPlan::Tiled128
    } else {
        GemmPlan::Tiled64
    }
}

/// Whether a thin product with a transposed left operand (`A` stored `K × M`) splits `K`:
/// `Some((blocks, z))` for split-K in `z` chunks over `blocks` row blocks of 32, then a
/// finishing pass; `None` for one block per 32 rows of `C` over the whole `K`.
pub(super) fn thin_ta_split(m: usize, k: usize) -> Option<(u32, u32)> {
    // A long K over few row blocks: split it so that enough blocks run.
    let split = k >= 2048 && m.div_ceil(32) < 512;
    split.then(|| (grid_stride_blocks(m, 32), (k / 1024).clamp(1, 128) as u32))
}

/// Elements spanned by a `rows × cols` row-major block with leading dimension `ld`.
pub(super) fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::shape::Shape;

    /// Runs the broadcast kernel's index arithmetic on the host and checks it against the
    /// odometer over the uncoalesced shapes.
    fn check_broadcast(lhs: &[usize], rhs: &[usize]) {
        let (a, b) = (Shape::from(lhs.to_vec()), Shape::from(rhs.to_vec()));
        let out = a.broadcast(&b, "test").unwrap();
        let (sa, sb) = (a.broadcast_strides(&out), b.broadcast_strides(&out));
        let plan = BroadcastPlan::new(out.dims(), &sa, &sb);
        assert!(plan.dims.len() <= out.rank().max(1));
        // Reference: every output coordinate's operand offsets.
        let n = out.elem_count();
        let dims = out.dims();
        let mut expect = Vec::with_capacity(n);
        let mut idx = vec![0usize; dims.len()];
        for _ in 0..n {
            let ia: usize = idx.iter().zip(&sa).map(|(i, s)| i * s).sum();
            let ib: usize = idx.iter().zip(&sb).map(|(i, s)| i * s).sum();
            expect.push((ia, ib));
            for d in (0..dims.len()).rev() {
                idx[d] += 1;
                if idx[d] < dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        // What the launches compute (elementwise.cu, MA_BINARY_BCAST).
        let (d4, a4, b4) = plan.inner4();
        let inner: usize = d4.iter().product();
        let mut got = vec![(usize::MAX, usize::MAX); n];
        for (oa, ob, oo) in plan.launches() {
            for i in 0..inner {
                let c = [
                    i / (d4[1] * d4[2] * d4[3]),
                    i / (d4[2] * d4[3]) % d4[1],
                    i / d4[3] % d4[2],
                    i % d4[3],
                ];
                let ia: usize = (0..4).map(|j| c[j] * a4[j]).sum();
                let ib: usize = (0..4).map(|j| c[j] * b4[j]).sum();
                got[oo + i] = (oa + ia, ob + ib);
            }
        }
        assert_eq!(got, expect, "{lhs:?} op {rhs:?}");
    }

    #[test]
    fn broadcast_plans_address_the_same_elements_as_numpy_broadcasting() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 4], &[4]),
            (&[3, 4], &[3, 1]),
            (&[3, 4], &[]),
            (&[], &[5]),
            (&[1], &[1]),
            (&[2, 1, 4], &[3, 1]),
            (&[2, 3, 4, 5], &[1, 3, 1, 5]),
            (&[2, 3, 4, 5, 6], &[1, 3, 1, 5, 1]),
            (&[2, 1, 2, 1, 2, 1, 3], &[2, 1, 2, 1, 2, 3]),
            (&[7, 1, 1, 5], &[7, 6, 1, 1]),
            (&[1, 1, 4], &[3, 1, 1]),
        ];
        for (a, b) in cases {
            check_broadcast(a, b);
            check_broadcast(b, a);
        }
        // Random shapes up to rank 6 with random broadcast dimensions.
        let mut rng = Rng::new(7);
        for _ in 0..300 {
            let rank = rng.below(7) as usize;
            let out: Vec<usize> = (0..rank).map(|_| 1 + rng.below(3) as usize).collect();
            let pick = |rng: &mut Rng| -> Vec<usize> {
                let drop = rng.below(rank as u64 + 1) as usize;
                out[drop..]
                    .iter()
                    .map(|&d| if rng.bernoulli(0.4) { 1 } else { d })
                    .collect()
            };
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            check_broadcast(&a, &b);
        }
    }

    #[test]
    fn common_broadcasts_coalesce_to_one_launch() {
        // Bias row over a batch: (N, C) + (C).
        let p = BroadcastPlan::new(&[1000, 390], &[390, 1], &[0, 1]);
        assert_eq!(p.dims, vec![1000, 390]);
        assert_eq!(p.launches().len(), 1);
        // Scalar times a rank-5 tensor: one dimension.
        let p = BroadcastPlan::new(&[2, 3, 4, 5, 6], &[360, 120, 30, 6, 1], &[0; 5]);
        assert_eq!(p.dims, vec![720]);
        assert_eq!(p.lhs_strides, vec![1]);
        assert_eq!(p.rhs_strides, vec![0]);
    }

    #[test]
    fn reduce_plans_follow_the_shape() {
        use ReduceVariant::*;
        assert_eq!(reduce_plan(1000, 10, 1), (Warp, (125, 1, 1)));
        assert_eq!(reduce_plan(3, 100_000, 1), (Block, (3, 1, 1)));
        // A bias gradient: (1, 4e6, 2) splits the long axis (README: 256 slabs).
        assert_eq!(reduce_plan(1, 4_000_000, 2), (Cols, (1, 1, 256)));
        // A batch of 1024 rows of 390 columns: one stage.
        assert_eq!(reduce_plan(1, 1024, 390), (Cols, (13, 1, 1)));
        assert_eq!(reduce_plan(100_000, 3, 7), (Cols, (1, 65535, 1)));
    }

    #[test]
    fn row_variants_and_grids_match_the_kernel_readme() {
        assert_eq!(row_variant(1), RowVariant::SmallC);
        assert_eq!(row_variant(32), RowVariant::SmallC);
        assert_eq!(row_variant(33), RowVariant::WarpRow);
        assert_eq!(row_variant(1024), RowVariant::WarpRow);
        assert_eq!(row_variant(1025), RowVariant::BlockRow);
        assert_eq!(row_blocks(1000, 3, SOFTMAX_BATCH), 4); // 4 lanes: 8 rows per warp × 4 sets × 8 warps
        assert_eq!(row_blocks(1, 32768, SOFTMAX_BATCH), 1);
        assert_eq!(grid_stride_blocks(0, 256), 1);
        assert_eq!(grid_stride_blocks(257, 256), 2);
        assert_eq!(grid_stride_blocks(usize::MAX / 2, 256), 65535);
    }

    #[test]
    fn gemm_plans_follow_the_shape() {
        assert_eq!(gemm_plan(1000, 2), GemmPlan::Thin);
        assert_eq!(gemm_plan(2, 1800), GemmPlan::ThinTransposed);
        assert_eq!(gemm_plan(4096, 4096), GemmPlan::Tiled128);
        assert_eq!(gemm_plan(1024, 390), GemmPlan::Tiled64);
        assert_eq!(thin_ta_split(1800, 1000), None);
        assert_eq!(thin_ta_split(1800, 100_000), Some((57, 97)));
        assert_eq!(extent(3, 4, 10), 24);
        assert_eq!(extent(0, 4, 10), 0);
    }
}
