//! [`CudaStorage`] and its [`BackendStorage`] implementation: each primitive picks its
//! kernel and plan (`plan.rs`; the fused cross-entropy's in `xent.rs`) and launches it
//! (`launch.rs`), which checks every buffer against what the launch touches.

use super::device::{internal, CudaDevice, DevBuf, DeviceInner};
use super::index::{out_of_range, with_index_check, CudaIndex, IndexBound};
use super::kernels::Kernel;
use super::launch::{self, Arg, Operand, Region};
use super::plan::{self, GemmPlan, ReduceVariant, RowVariant};
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp, XentArgs};
use crate::error::{Error, Result};
use crate::shape::Shape;

/// f32 data on a CUDA device. Dropping it returns the buffer to the device's pool.
pub struct CudaStorage {
    pub(super) buf: Option<DevBuf>,
    pub(super) addr: u64,
    pub(super) len: usize,
    pub(super) dev: CudaDevice,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage{{len: {}, device: {:?}}}",
            self.len, self.dev
        )
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.dev.inner.recycle(buf);
        }
    }
}

/// `a · b` with an overflow check (sizes come from shapes the caller built).
pub(super) fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::Device(format!("size {a} × {b} overflows")))
}

impl CudaStorage {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub(super) fn inner(&self) -> &DeviceInner {
        &self.dev.inner
    }

    pub(super) fn region(&self) -> Region {
        let (addr, len) = (self.addr, self.len);
        Region { addr, len }
    }

    pub(super) fn check_device(&self, dev: &CudaDevice, op: &str) -> Result<()> {
        if !self.dev.same_device(dev) {
            return Err(Error::Device(format!(
                "{op}: operands on CUDA devices {} and {}",
                self.dev.ordinal(),
                dev.ordinal()
            )));
        }
        Ok(())
    }

    pub(super) fn check_len(&self, need: usize, what: &str) -> Result<()> {
        if self.len < need {
            return Err(internal(format!(
                "{what}: {} elements where {need} are needed",
                self.len
            )));
        }
        Ok(())
    }
}

/// `C = op(A) op(B)` (`m × k` times `k × n`), `C` contiguous.
fn gemm(dev: &CudaDevice, [a, b, c]: [Operand; 3], (m, n, k): (usize, usize, usize)) -> Result<()> {
    match plan::gemm_plan(m, n) {
        GemmPlan::Thin => gemm_thin(dev, [a, b, c], (m, n, k)),
        GemmPlan::ThinTransposed => {
            // Cᵀ = op(B)ᵀ op(A)ᵀ: each operand is read with its transpose flag flipped.
            let ct = dev.output(mul(n, m)?)?;
            let flip = |x: Operand| Operand::new(x.r, !x.trans, x.ld);
            gemm_thin(
                dev,
                [flip(b), flip(a), Operand::new(ct.region(), false, m)],
                (n, m, k),
            )?;
            launch::transpose2d(&dev.inner, ct.region(), c.r, n, m)
        }
        p @ (GemmPlan::Tiled128 | GemmPlan::Tiled64) => {
            let (kernel, tile) = match p {
                GemmPlan::Tiled128 => (Kernel::Sgemm128, 128),
                _ => (Kernel::Sgemm64, 64),
            };
            // The grid's y dimension holds at most 65535 row tiles: split taller products.
            let max_rows = plan::MAX_GRID * tile;
            for i0 in (0..m).step_by(max_rows) {
                let a_off = if a.trans { i0 } else { i0 * a.ld };
                let a_part = Operand::new(a.r.offset(a_off)?, a.trans, a.ld);
                let c_part = Operand::new(c.r.offset(i0 * n)?, false, n);
                let rows = max_rows.min(m - i0);
                launch::sgemm_tiled(&dev.inner, kernel, [a_part, b, c_part], (rows, n, k))?;
            }
            Ok(())
        }
    }
}

/// `C = op(A) op(B)` with `n <= 16`.
fn gemm_thin(dev: &CudaDevice, ops: [Operand; 3], (m, n, k): (usize, usize, usize)) -> Result<()> {
    match plan::thin_ta_split(m, k) {
        Some(split) if ops[0].trans => {
            let work = dev.output(mul(split.1 as usize, mul(m, n)?)?)?;
            launch::sgemm_thin_split(&dev.inner, ops, work.region(), (m, n, k), split)
        }
        _ => launch::sgemm_thin(&dev.inner, ops, (m, n, k)),
    }
}

impl CudaStorage {
    /// An op whose kernel follows the first `n` entries of `idx` into `0..size`, checked
    /// ([`with_index_check`]; `op` names it in the error), writing `out`.
    fn indexed(
        &self,
        (kernel, op): (Kernel, &'static str),
        idx: &CudaIndex,
        (n, cols, size): (usize, usize, usize),
        out: CudaStorage,
    ) -> Result<Self> {
        with_index_check(&self.dev, idx, (n, size), out_of_range(op, size), |bad| {
            let bufs = [self.region(), idx.region(), out.region(), bad];
            launch::indexed(self.inner(), kernel, bufs, (n, cols, size))
        })?;
        Ok(out)
    }
}

impl BackendStorage for CudaStorage {
    type Index = CudaIndex;

    fn len(&self) -> usize {
        self.len
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        self.inner().download(self.buf.as_ref(), 0, self.len)
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        let n = self.len;
        let out = self.dev.output(n)?;
        let (kernel, params) = Kernel::unary(op);
        let scalars: Vec<Arg> = params.into_iter().map(Arg::F).collect();
        let bufs = [self.region(), out.region()];
        launch::elementwise(self.inner(), kernel, &bufs, n, &scalars)?;
        Ok(out)
    }

    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_shape: &Shape,
        rhs_shape: &Shape,
        out_shape: &Shape,
    ) -> Result<Self> {
        rhs.check_device(&self.dev, "binary")?;
        let n = out_shape.elem_count();
        let out = self.dev.output(n)?;
        if n == 0 {
            return Ok(out);
        }
        let [same, bcast] = Kernel::binary(op);
        let (a, b, o) = (self.region(), rhs.region(), out.region());
        if lhs_shape.elem_count() == n && rhs_shape.elem_count() == n {
            launch::elementwise(self.inner(), same, &[a, b, o], n, &[])?;
            return Ok(out);
        }
        let plan = plan::BroadcastPlan::new(
            out_shape.dims(),
            &lhs_shape.broadcast_strides(out_shape),
            &rhs_shape.broadcast_strides(out_shape),
        );
        let (d, sa, sb) = plan.inner4();
        for (oa, ob, oo) in plan.launches() {
            let parts = [a.offset(oa)?, b.offset(ob)?, o.offset(oo)?];
            launch::binary_bcast(self.inner(), bcast, parts, d, sa, sb)?;
        }
        Ok(out)
    }

    fn where_cond(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        on_true.check_device(&self.dev, "where_cond")?;
        on_false.check_device(&self.dev, "where_cond")?;
        let n = self.len;
        let out = self.dev.output(n)?;
        let bufs = [
            self.region(),
            on_true.region(),
            on_false.region(),
            out.region(),
        ];
        launch::elementwise(self.inner(), Kernel::WhereCond, &bufs, n, &[])?;
        Ok(out)
    }

    fn reduce(&self, op: ReduceOp, outer: usize, len: usize, inner: usize) -> Result<Self> {
        self.check_len(mul(mul(outer, len)?, inner)?, "reduce input")?;
        let n_out = mul(outer, inner)?;
        let out = self.dev.output(n_out)?;
        if n_out == 0 {
            return Ok(out);
        }
        use Kernel::*;
        let [warp, block, cols] = match op {
            ReduceOp::Sum => [SumAxisWarp, SumAxisBlock, SumAxisCols],
            ReduceOp::Max => [MaxAxisWarp, MaxAxisBlock, MaxAxisCols],
        };
        let (dev, shape) = (self.inner(), (outer, len, inner));
        let (x, y) = (self.region(), out.region());
        let (variant, grid) = plan::reduce_plan(outer, len, inner);
        let kernel = match variant {
            ReduceVariant::Warp => warp,
            ReduceVariant::Block => block,
            ReduceVariant::Cols => cols,
        };
        if grid.2 == 1 {
            launch::reduce(dev, kernel, [x, y], shape, grid)?;
        } else {
            // Stage 1: z slabs of partial results over chunks of the axis; stage 2 reduces
            // the slabs, viewed as (1, z, outer·inner).
            let partial = self.dev.output(mul(grid.2 as usize, n_out)?)?;
            let p = partial.region();
            launch::reduce(dev, cols, [x, p], shape, grid)?;
            let (slabs, tiles) = (grid.2 as usize, n_out.div_ceil(32));
            let tiles = launch::to_u32(tiles, "column tiles", cols)?;
            launch::reduce(dev, cols, [p, y], (1, slabs, n_out), (tiles, 1, 1))?;
        }
        Ok(out)
    }

    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_t: bool,
        rhs_t: bool,
    ) -> Result<Self> {
        rhs.check_device(&self.dev, "matmul")?;
        let out = self.dev.output(mul(m, n)?)?;
        if m == 0 || n == 0 {
            return Ok(out);
        }
        // A stored transposed is k × m (leading dimension m); B stored transposed is n × k.
        let a = Operand::new(self.region(), lhs_t, if lhs_t { m } else { k });
        let b = Operand::new(rhs.region(), rhs_t, if rhs_t { k } else { n });
        let c = Operand::new(out.region(), false, n);
        gemm(&self.dev, [a, b, c], (m, n, k))?;
        Ok(out)
    }

    fn index_select_rows(&self, cols: usize, idx: &CudaIndex) -> Result<Self> {
        let rows = self.len.checked_div(cols).unwrap_or(0);
        let out = self.dev.output(mul(idx.len, cols)?)?;
        let kernel = (Kernel::IndexSelectRows, "index_select");
        self.indexed(kernel, idx, (idx.len, cols, rows), out)
    }

    fn index_add_rows(&self, cols: usize, idx: &CudaIndex, out_rows: usize) -> Result<Self> {
        let out = self.dev.zeros(mul(out_rows, cols)?)?;
        let kernel = (Kernel::IndexAddRows, "index_add");
        self.indexed(kernel, idx, (idx.len, cols, out_rows), out)
    }

    fn gather_cols(&self, rows: usize, cols: usize, idx: &CudaIndex) -> Result<Self> {
        let out = self.dev.output(rows)?;
        self.indexed((Kernel::GatherCols, "gather"), idx, (rows, cols, cols), out)
    }

    fn scatter_cols(&self, rows: usize, cols: usize, idx: &CudaIndex) -> Result<Self> {
        let out = self.dev.output(mul(rows, cols)?)?;
        let kernel = (Kernel::ScatterCols, "scatter");
        self.indexed(kernel, idx, (rows, cols, cols), out)
    }

    fn copy2d(
        &self,
        dst: &mut Self,
        rows: usize,
        cols: usize,
        src_stride: usize,
        dst_stride: usize,
        src_offset: usize,
        dst_offset: usize,
    ) -> Result<()> {
        dst.check_device(&self.dev, "copy2d")?;
        launch::copy2d(
            self.inner(),
            [self.region(), dst.region()],
            (rows, cols),
            (src_stride, dst_stride),
            (src_offset, dst_offset),
        )
    }

    fn transpose2d(&self, rows: usize, cols: usize) -> Result<Self> {
        let out = self.dev.output(mul(rows, cols)?)?;
        launch::transpose2d(self.inner(), self.region(), out.region(), rows, cols)?;
        Ok(out)
    }

    fn softmax_rows(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let out = self.dev.output(mul(rows, cols)?)?;
        let kernel = match (plan::row_variant(cols), log) {
            (RowVariant::SmallC, false) => Kernel::SoftmaxSmallC,
            (RowVariant::SmallC, true) => Kernel::LogSoftmaxSmallC,
            (RowVariant::WarpRow, false) => Kernel::SoftmaxWarpRow,
            (RowVariant::WarpRow, true) => Kernel::LogSoftmaxWarpRow,
            (RowVariant::BlockRow, false) => Kernel::SoftmaxBlockRow,
            (RowVariant::BlockRow, true) => Kernel::LogSoftmaxBlockRow,
        };
        let (bufs, blocks) = (
            [self.region(), out.region()],
            plan::row_blocks(rows, cols, plan::SOFTMAX_BATCH),
        );
        launch::softmax(self.inner(), kernel, bufs, (rows, cols), blocks)?;
        Ok(out)
    }

    fn argmax_rows(&self, rows: usize, cols: usize) -> Result<CudaIndex> {
        let mut out = self.dev.output_u32(rows)?;
        // Every result is a column index; a row without columns gets u32::MAX.
        out.bound = IndexBound::AtMost(match cols {
            0 => u32::MAX,
            c => u32::try_from(c - 1).unwrap_or(u32::MAX),
        });
        launch::argmax(self.inner(), [self.region(), out.region()], rows, cols)?;
        Ok(out)
    }

    fn xent(&self, args: XentArgs<'_, Self, CudaIndex>) -> Result<(Self, Option<Self>)> {
        super::xent::xent(self, args)
    }

    /// On the device (`xrm_flip_targets_f32`, in f64 exactly as the CPU backend computes
    /// it): the logits stay there; the uniforms go up (8 bytes a row) and the targets come
    /// back (4 bytes a row). Errors: a storage shorter than `rows × k`, `uniforms.len() !=
    /// rows`.
    fn flip_targets(&self, rows: usize, k: usize, uniforms: &[f64]) -> Result<Vec<Option<u32>>> {
        self.check_len(mul(rows, k)?, "XRM held-out logits")?;
        if uniforms.len() != rows {
            return Err(Error::arg(
                "uniforms",
                format!("{} uniforms for {rows} rows", uniforms.len()),
            ));
        }
        if rows == 0 || k < 2 {
            return Ok(vec![None; rows]);
        }
        // Each f64 as two u32 words, low word first (the device is little-endian).
        let words: Vec<u32> = uniforms
            .iter()
            .flat_map(|u| {
                let bits = u.to_bits();
                [bits as u32, (bits >> 32) as u32]
            })
            .collect();
        let u = self.dev.index_from_host(&words)?;
        let target = self.dev.output_u32(rows)?;
        let bufs = [self.region(), u.region(), target.region()];
        launch::xrm_flip_targets(self.inner(), bufs, rows, k)?;
        Ok(target
            .to_host()?
            .into_iter()
            .map(|t| (t != u32::MAX).then_some(t))
            .collect())
    }

    fn sum_all(&self) -> Result<Self> {
        let (n, dev) = (self.len, self.inner());
        let out = self.dev.output(1)?;
        if n <= plan::SUM_ONE_BLOCK_MAX {
            launch::sum_one_block(dev, self.region(), n, out.region())?;
        } else {
            // A fixed number of partial sums, so the association is the same on every GPU.
            let partials = self.dev.output(plan::SUM_PARTIALS)?;
            let p = partials.region();
            launch::sum_partials(dev, self.region(), n, p, plan::SUM_PARTIALS as u32)?;
            launch::sum_one_block(dev, p, plan::SUM_PARTIALS, out.region())?;
        }
        Ok(out)
    }

    fn sgd_update(
        &mut self,
        grad: &Self,
        momentum_buf: Option<&mut Self>,
        h: SgdStep,
    ) -> Result<()> {
        grad.check_device(&self.dev, "sgd_update")?;
        // Without a buffer the update has no momentum, as on the CPU.
        let (buf, h) = match momentum_buf {
            Some(b) => {
                b.check_device(&self.dev, "sgd_update")?;
                (b.region(), h)
            }
            None => (Region::NULL, SgdStep { momentum: 0.0, ..h }),
        };
        let bufs = [self.region(), grad.region(), buf];
        launch::sgd(self.inner(), bufs, self.len, &h)
    }

    fn adam_update(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: AdamStep) -> Result<()> {
        for t in [grad, &*m, &*v] {
            t.check_device(&self.dev, "adam_update")?;
        }
        let bufs = [self.region(), grad.region(), m.region(), v.region()];
        launch::adam(self.inner(), bufs, self.len, &h)
    }
}

#[cfg(test)]
mod tests {
    //! The device layer on the host emulator: pool, poisoning, faults, devices.
    use super::*;

    fn emu() -> CudaDevice {
        CudaDevice::emulated().expect("the emulator needs no driver")
    }

    #[test]
    fn buffers_return_to_the_pool_and_are_reused_by_length() {
        let dev = emu();
        // A length no other test uses (tests share the emulator and run concurrently).
        let len = 12_345;
        let a = dev.zeros(len).unwrap();
        let addr = a.addr;
        drop(a);
        assert!(dev.pooled_bytes() >= 4 * len);
        let b = dev.full(len, 2.0).unwrap();
        assert_eq!(
            b.addr, addr,
            "the pooled buffer of that length is handed out again"
        );
        assert_eq!(b.to_host().unwrap(), vec![2.0; len]);
        let c = dev.zeros(len).unwrap();
        assert_ne!(c.addr, addr, "a buffer in use is not handed out twice");
        drop((b, c));
        let before = dev.allocations();
        dev.release_pool();
        let d = dev.zeros(len).unwrap();
        assert!(
            dev.allocations() > before,
            "after a release the device allocates again"
        );
        drop(d);
    }

    #[test]
    fn poisoned_outputs_start_as_nan_and_zeros_stay_zero() {
        let dev = emu();
        dev.set_poison_outputs(true);
        let out = dev.output(7).unwrap();
        assert!(out.to_host().unwrap().iter().all(|v| v.is_nan()));
        drop(out);
        // The same buffer comes back zeroed when asked for zeros.
        assert_eq!(dev.zeros(7).unwrap().to_host().unwrap(), vec![0.0; 7]);
    }

    #[test]
    fn out_of_bounds_accesses_are_device_faults_not_memory_errors() {
        let dev = emu();
        let x = dev.full(4, 1.0).unwrap();
        let y = dev.output(4).unwrap();
        // Claim a longer region than the buffer: the emulator catches the access.
        let long = |r: Region| Region {
            addr: r.addr,
            len: 8,
        };
        let bufs = [long(x.region()), long(y.region())];
        let err = launch::elementwise(&dev.inner, Kernel::Neg, &bufs, 8, &[]).unwrap_err();
        assert!(err.to_string().contains("emulated device fault"), "{err}");
    }

    #[test]
    fn storages_of_different_devices_do_not_mix() {
        let dev = emu();
        let a = dev.zeros(3).unwrap();
        assert!(a.check_device(&dev, "test").is_ok());
        assert!(CudaDevice::new(usize::MAX).is_err());
        // Without a driver (this machine, usually) opening a GPU is an error, not a panic.
        if let Err(e) = CudaDevice::new(0) {
            assert!(matches!(e, Error::Device(_) | Error::Cuda(_)), "{e}");
        }
    }
}
