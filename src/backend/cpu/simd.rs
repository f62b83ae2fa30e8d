//! f32 vectors for kernels written once and compiled for each instruction set.
//!
//! A kernel generic over [`Simd`] runs with [`Scalar`] (one lane: the reference), [`Lanes8`]
//! (the portable path for blocks: 8 lanes as arrays, plain Rust that the compiler
//! vectorizes), [`Avx2`] (8 lanes, with FMA) or [`Avx512`] (16 lanes). Every arithmetic
//! method is one IEEE operation per lane — no reassociation, no fused multiply-add except
//! where asked for by name ([`Simd::mul_add`], rounded once on every path), and
//! `scale_pow2`'s AVX-512 `vscalefps` is the same correctly rounded product — so each lane of
//! a vector instantiation computes the bits of the scalar one. [`exp`] and [`ln_of_sum`] are
//! written here once, in these operations; `math::exp` and `math::ln_of_sum` are their
//! scalar instantiations.
//!
//! The vector types are tokens: a value exists only where the CPU has the instruction set
//! and `MEMAWARE_SIMD` allows it ([`Avx2::new`], [`Avx512::new`] probe both), which is what
//! makes their methods safe to call.
//! A generic kernel is fast only when it is inlined into a function compiled for the
//! instruction set (`#[target_feature]`); elsewhere it is still correct.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One instruction set's f32 vectors (`F`), i32 vectors (`I`) and lane masks (`M`).
pub(super) trait Simd: Copy {
    /// Lanes per vector.
    const LANES: usize;
    type F: Copy;
    type I: Copy;
    type M: Copy;

    fn splat(self, v: f32) -> Self::F;
    fn splat_i(self, v: i32) -> Self::I;
    /// # Safety
    /// `p` is valid for [`Self::LANES`] reads.
    unsafe fn load(self, p: *const f32) -> Self::F;
    /// # Safety
    /// `p` is valid for [`Self::LANES`] writes.
    unsafe fn store(self, p: *mut f32, v: Self::F);
    /// # Safety
    /// `p` is valid for [`Self::LANES`] reads.
    unsafe fn load_u32(self, p: *const u32) -> Self::I;

    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a·b + c` rounded once (a fused multiply-add on every path; the portable ones use
    /// `f32::mul_add`, which is slow where the CPU has no FMA instruction).
    fn mul_add(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The larger lane; which one on NaN or on `±0` against `∓0` is the instruction set's
    /// (a NaN row's loss is NaN either way, and `m + ln Σ` is the same for `m = ±0`).
    fn max(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a < b`, `a > b`, `a == b` (false where either is NaN).
    fn lt(self, a: Self::F, b: Self::F) -> Self::M;
    fn gt(self, a: Self::F, b: Self::F) -> Self::M;
    fn eq(self, a: Self::F, b: Self::F) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    /// `x < lo ? lo : x` per lane, so NaN passes (one instruction on x86: `max(lo, x)`
    /// returns its second operand unless the first is greater).
    #[inline(always)]
    fn at_least(self, x: Self::F, lo: Self::F) -> Self::F {
        self.select(self.lt(x, lo), lo, x)
    }
    /// `x > hi ? hi : x` per lane, so NaN passes (x86: `min(hi, x)`).
    #[inline(always)]
    fn at_most(self, x: Self::F, hi: Self::F) -> Self::F {
        self.select(self.gt(x, hi), hi, x)
    }

    fn f32_to_bits(self, a: Self::F) -> Self::I;
    fn bits_to_f32(self, a: Self::I) -> Self::F;
    /// The i32 lanes as f32 (exact below 2^24).
    fn to_f32(self, a: Self::I) -> Self::F;
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I;
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I;
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// Arithmetic shift right, shift left, by `n < 32`.
    fn shr_i(self, a: Self::I, n: u32) -> Self::I;
    fn shl_i(self, a: Self::I, n: u32) -> Self::I;
    /// Lanes equal to `v`.
    fn eq_i(self, a: Self::I, v: i32) -> Self::M;
    /// Whether any lane, read as u32, is at least `v`.
    fn any_at_least(self, a: Self::I, v: u32) -> bool;
    /// `q · 2^k` for `q ∈ [½, 2]` and integer `k ∈ [-150, 128]` (`kf` as f32, `k` as i32),
    /// rounded once ([`scale_pow2_twice`]). Where every lane's `k` is in `[-125, 127]` (in
    /// the cross-entropy, unless a row holds a logit some 87 below its maximum) the product
    /// is normal or overflows, so one multiply by the exact power has the same bits and the
    /// vector skips the second multiply and its exponent arithmetic. The scalar path keeps
    /// the branch-free form, which the compiler vectorizes.
    #[inline(always)]
    fn scale_pow2(self, q: Self::F, kf: Self::F, k: Self::I) -> Self::F {
        let _ = kf;
        if !self.any_at_least(self.add_i(k, self.splat_i(125)), 253) {
            return self.mul(q, pow2(self, k));
        }
        scale_pow2_twice(self, q, k)
    }

    /// Eight running sums, one per lane of `block_sum`'s order (the values at `i ≡ l mod 8`
    /// into sum `l`, in order of `i`).
    type H: Copy;
    fn zero_h(self) -> Self::H;
    /// The lanes of `v`, values `row ..` of the sequence (`row` a multiple of 8 where
    /// `LANES ≥ 8`), added into their running sums in order: `(acc + lanes 0..8) + lanes
    /// 8..16`.
    fn add_in_sum_order(self, acc: Self::H, v: Self::F, row: usize) -> Self::H;
    fn h_to_array(self, acc: Self::H) -> [f32; 8];

    /// The [`Self::LANES`] rows of `C ≤ 16` floats at `p` (row-major) as `C` vectors, one per
    /// column: lane `r` of vector `j` is `p[C·r + j]`, or `p[C·r + j] + add[C·r + j]` with
    /// `add` (added before the rows are rearranged, so the rearranging is done once).
    ///
    /// # Safety
    /// `p`, and `add` if given, are valid for `LANES · C` reads.
    unsafe fn load_columns<const C: usize>(
        self,
        p: *const f32,
        add: Option<*const f32>,
    ) -> [Self::F; C];
    /// The inverse of [`Self::load_columns`]: writes the `LANES · C` floats at `p`.
    ///
    /// # Safety
    /// `p` is valid for `LANES · C` writes.
    unsafe fn store_columns<const C: usize>(self, p: *mut f32, v: &[Self::F; C]);

    /// A block's rows into class vectors: row `r < LANES` holds `w ≤ LANES` floats at
    /// `src + r·stride` (plus the floats at the same offsets from `add`, added before the
    /// move), and vector `c` of the `LANES` written at `dst` is column `c` (lane `r` = row
    /// `r`); vectors `w ..` are zero. Reads nothing past a row's `w` floats.
    ///
    /// # Safety
    /// `src` (and `add`) are valid for those reads, `dst` for `LANES · LANES` writes, and the
    /// two do not overlap.
    #[inline(always)]
    unsafe fn transpose_in(
        self,
        src: *const f32,
        add: Option<*const f32>,
        stride: usize,
        w: usize,
        dst: *mut f32,
    ) {
        let n = Self::LANES;
        for c in 0..n {
            for r in 0..n {
                // SAFETY: the caller's contract.
                unsafe {
                    *dst.add(c * n + r) = if c < w {
                        let v = *src.add(r * stride + c);
                        add.map_or(v, |a| v + *a.add(r * stride + c))
                    } else {
                        0.0
                    }
                };
            }
        }
    }

    /// [`Self::transpose_in`] backwards, each vector multiplied by `scale` on the way (lane
    /// `r`, row `r`'s factor: the multiply the caller would otherwise make in a pass of its
    /// own): the `LANES` vectors at `src` are columns, and row `r < LANES` gets its first
    /// `w ≤ LANES` floats at `dst + r·stride` (nothing else is written).
    ///
    /// # Safety
    /// `src` is valid for `LANES · LANES` reads, `dst` for those writes, and the two do not
    /// overlap.
    #[inline(always)]
    unsafe fn transpose_out(
        self,
        src: *const f32,
        scale: Self::F,
        w: usize,
        dst: *mut f32,
        stride: usize,
    ) {
        let n = Self::LANES;
        for c in 0..w {
            // SAFETY: the caller's contract; a vector is its `n` floats in order.
            unsafe {
                let v = self.mul(self.load(src.add(c * n)), scale);
                let v: *const f32 = (&raw const v).cast();
                for r in 0..n {
                    *dst.add(r * stride + c) = *v.add(r);
                }
            }
        }
    }
}

/// Index tables of the transposes of a block of `N` rows of `C` floats (compile-time
/// constants, so that no kernel builds them per block).
struct Columns<const N: usize, const C: usize>;

impl<const N: usize, const C: usize> Columns<N, C> {
    /// `POS[j][r]`: position of row `r`, column `j` in the block, `C·r + j`.
    const POS: [[i32; N]; 16] = {
        let mut t = [[0i32; N]; 16];
        let mut j = 0;
        while j < C {
            let mut r = 0;
            while r < N {
                t[j][r] = (C * r + j) as i32;
                r += 1;
            }
            j += 1;
        }
        t
    };
    /// `ROW[k][l]`, `COL[k][l]`: row and column of the float at position `N·k + l`.
    const ROW: [[i32; N]; 16] = {
        let mut t = [[0i32; N]; 16];
        let mut k = 0;
        while k < C {
            let mut l = 0;
            while l < N {
                t[k][l] = ((N * k + l) / C) as i32;
                l += 1;
            }
            k += 1;
        }
        t
    };
    const COL: [[i32; N]; 16] = {
        let mut t = [[0i32; N]; 16];
        let mut k = 0;
        while k < C {
            let mut l = 0;
            while l < N {
                t[k][l] = ((N * k + l) % C) as i32;
                l += 1;
            }
            k += 1;
        }
        t
    };
}

/// One lane: the reference every vector path is tested against, and the scalar `exp` and
/// `ln_of_sum`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type F = f32;
    type I = i32;
    type M = bool;
    type H = [f32; 8];

    #[inline(always)]
    fn zero_h(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn add_in_sum_order(self, mut acc: [f32; 8], v: f32, row: usize) -> [f32; 8] {
        acc[row % 8] += v;
        acc
    }
    #[inline(always)]
    fn h_to_array(self, acc: [f32; 8]) -> [f32; 8] {
        acc
    }

    #[inline(always)]
    fn splat(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> i32 {
        v
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        // SAFETY: the caller's promise.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        // SAFETY: the caller's promise.
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn load_u32(self, p: *const u32) -> i32 {
        // SAFETY: the caller's promise.
        unsafe { *p as i32 }
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn lt(self, a: f32, b: f32) -> bool {
        a < b
    }
    #[inline(always)]
    fn gt(self, a: f32, b: f32) -> bool {
        a > b
    }
    #[inline(always)]
    fn eq(self, a: f32, b: f32) -> bool {
        a == b
    }
    #[inline(always)]
    fn select(self, m: bool, a: f32, b: f32) -> f32 {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn f32_to_bits(self, a: f32) -> i32 {
        a.to_bits() as i32
    }
    #[inline(always)]
    fn bits_to_f32(self, a: i32) -> f32 {
        f32::from_bits(a as u32)
    }
    #[inline(always)]
    fn to_f32(self, a: i32) -> f32 {
        a as f32
    }
    #[inline(always)]
    fn add_i(self, a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub_i(self, a: i32, b: i32) -> i32 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn and_i(self, a: i32, b: i32) -> i32 {
        a & b
    }
    #[inline(always)]
    fn shr_i(self, a: i32, n: u32) -> i32 {
        a >> n
    }
    #[inline(always)]
    fn shl_i(self, a: i32, n: u32) -> i32 {
        a.wrapping_shl(n)
    }
    #[inline(always)]
    fn eq_i(self, a: i32, v: i32) -> bool {
        a == v
    }
    #[inline(always)]
    fn any_at_least(self, a: i32, v: u32) -> bool {
        a as u32 >= v
    }
    #[inline(always)]
    fn scale_pow2(self, q: f32, _kf: f32, k: i32) -> f32 {
        scale_pow2_twice(self, q, k)
    }
    #[inline(always)]
    unsafe fn load_columns<const C: usize>(
        self,
        p: *const f32,
        add: Option<*const f32>,
    ) -> [f32; C] {
        let mut v = [0.0f32; C];
        for (j, x) in v.iter_mut().enumerate() {
            // SAFETY: the caller's promise.
            unsafe {
                *x = *p.add(j);
                if let Some(q) = add {
                    *x += *q.add(j);
                }
            }
        }
        v
    }
    #[inline(always)]
    unsafe fn store_columns<const C: usize>(self, p: *mut f32, v: &[f32; C]) {
        // SAFETY: the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, C) }
    }
}

/// The portable path for blocks of rows: 8 lanes as arrays, each method a loop over them
/// that the compiler vectorizes for whatever the target has (SSE2, NEON), with the scalar
/// operations lane by lane.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lanes8;

/// `[f(a[0], b[0]), …]` over 8 lanes.
#[inline(always)]
fn zip8<T: Copy, U: Copy>(a: [T; 8], b: [T; 8], f: impl Fn(T, T) -> U) -> [U; 8] {
    std::array::from_fn(|l| f(a[l], b[l]))
}

impl Simd for Lanes8 {
    const LANES: usize = 8;
    type F = [f32; 8];
    type I = [i32; 8];
    type M = [bool; 8];
    type H = [f32; 8];

    #[inline(always)]
    fn zero_h(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn add_in_sum_order(self, acc: [f32; 8], v: [f32; 8], row: usize) -> [f32; 8] {
        debug_assert_eq!(row % 8, 0);
        zip8(acc, v, |a, b| a + b)
    }
    #[inline(always)]
    fn h_to_array(self, acc: [f32; 8]) -> [f32; 8] {
        acc
    }

    #[inline(always)]
    fn splat(self, v: f32) -> [f32; 8] {
        [v; 8]
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> [i32; 8] {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> [f32; 8] {
        // SAFETY: the caller's promise.
        unsafe { p.cast::<[f32; 8]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: [f32; 8]) {
        // SAFETY: the caller's promise.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_u32(self, p: *const u32) -> [i32; 8] {
        // SAFETY: the caller's promise.
        unsafe { p.cast::<[i32; 8]>().read_unaligned() }
    }
    #[inline(always)]
    fn add(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        zip8(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        zip8(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        zip8(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        zip8(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn mul_add(self, a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    #[inline(always)]
    fn max(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        zip8(a, b, f32::max)
    }
    #[inline(always)]
    fn lt(self, a: [f32; 8], b: [f32; 8]) -> [bool; 8] {
        zip8(a, b, |x, y| x < y)
    }
    #[inline(always)]
    fn gt(self, a: [f32; 8], b: [f32; 8]) -> [bool; 8] {
        zip8(a, b, |x, y| x > y)
    }
    #[inline(always)]
    fn eq(self, a: [f32; 8], b: [f32; 8]) -> [bool; 8] {
        zip8(a, b, |x, y| x == y)
    }
    #[inline(always)]
    fn select(self, m: [bool; 8], a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|l| if m[l] { a[l] } else { b[l] })
    }
    #[inline(always)]
    fn f32_to_bits(self, a: [f32; 8]) -> [i32; 8] {
        a.map(|x| x.to_bits() as i32)
    }
    #[inline(always)]
    fn bits_to_f32(self, a: [i32; 8]) -> [f32; 8] {
        a.map(|x| f32::from_bits(x as u32))
    }
    #[inline(always)]
    fn to_f32(self, a: [i32; 8]) -> [f32; 8] {
        a.map(|x| x as f32)
    }
    #[inline(always)]
    fn add_i(self, a: [i32; 8], b: [i32; 8]) -> [i32; 8] {
        zip8(a, b, i32::wrapping_add)
    }
    #[inline(always)]
    fn sub_i(self, a: [i32; 8], b: [i32; 8]) -> [i32; 8] {
        zip8(a, b, i32::wrapping_sub)
    }
    #[inline(always)]
    fn and_i(self, a: [i32; 8], b: [i32; 8]) -> [i32; 8] {
        zip8(a, b, |x, y| x & y)
    }
    #[inline(always)]
    fn shr_i(self, a: [i32; 8], n: u32) -> [i32; 8] {
        a.map(|x| x >> n)
    }
    #[inline(always)]
    fn shl_i(self, a: [i32; 8], n: u32) -> [i32; 8] {
        a.map(|x| x.wrapping_shl(n))
    }
    #[inline(always)]
    fn eq_i(self, a: [i32; 8], v: i32) -> [bool; 8] {
        a.map(|x| x == v)
    }
    #[inline(always)]
    fn any_at_least(self, a: [i32; 8], v: u32) -> bool {
        a.iter().any(|&x| x as u32 >= v)
    }
    #[inline(always)]
    unsafe fn load_columns<const C: usize>(
        self,
        p: *const f32,
        add: Option<*const f32>,
    ) -> [[f32; 8]; C] {
        // Loaded, then added: choosing per element cost 3.5 % at C = 10.
        let mut v = [[0.0f32; 8]; C];
        for (j, col) in v.iter_mut().enumerate() {
            for (r, x) in col.iter_mut().enumerate() {
                // SAFETY: the caller's promise.
                *x = unsafe { *p.add(C * r + j) };
            }
        }
        if let Some(q) = add {
            for (j, col) in v.iter_mut().enumerate() {
                for (r, x) in col.iter_mut().enumerate() {
                    // SAFETY: the caller's promise.
                    *x += unsafe { *q.add(C * r + j) };
                }
            }
        }
        v
    }
    #[inline(always)]
    unsafe fn store_columns<const C: usize>(self, p: *mut f32, v: &[[f32; 8]; C]) {
        for r in 0..8 {
            for (j, col) in v.iter().enumerate() {
                // SAFETY: the caller's promise.
                unsafe { *p.add(C * r + j) = col[r] };
            }
        }
    }
}

/// AVX2 with FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token, where the CPU has AVX2 and FMA.
    pub(super) fn new() -> Option<Avx2> {
        super::has_avx2().then_some(Avx2(()))
    }
}

/// Runs intrinsics that need the token's instruction set.
#[cfg(target_arch = "x86_64")]
macro_rules! with_isa {
    ($e:expr) => {
        // SAFETY: a token exists only where the CPU has its instruction set (`new`).
        unsafe { $e }
    };
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const LANES: usize = 8;
    type F = __m256;
    type I = __m256i;
    type M = __m256;
    type H = __m256;

    #[inline(always)]
    fn zero_h(self) -> __m256 {
        with_isa!(_mm256_setzero_ps())
    }
    #[inline(always)]
    fn add_in_sum_order(self, acc: __m256, v: __m256, row: usize) -> __m256 {
        debug_assert_eq!(row % 8, 0);
        with_isa!(_mm256_add_ps(acc, v))
    }
    #[inline(always)]
    fn h_to_array(self, acc: __m256) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        with_isa!(_mm256_storeu_ps(out.as_mut_ptr(), acc));
        out
    }

    #[inline(always)]
    fn splat(self, v: f32) -> __m256 {
        with_isa!(_mm256_set1_ps(v))
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> __m256i {
        with_isa!(_mm256_set1_epi32(v))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        with_isa!(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        with_isa!(_mm256_storeu_ps(p, v))
    }
    #[inline(always)]
    unsafe fn load_u32(self, p: *const u32) -> __m256i {
        with_isa!(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_add_ps(a, b))
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_sub_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_mul_ps(a, b))
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_div_ps(a, b))
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        with_isa!(_mm256_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_max_ps(a, b))
    }
    #[inline(always)]
    fn lt(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    fn gt(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_cmp_ps::<_CMP_GT_OQ>(a, b))
    }
    #[inline(always)]
    fn eq(self, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
        with_isa!(_mm256_blendv_ps(b, a, m))
    }
    #[inline(always)]
    fn at_least(self, x: Self::F, lo: Self::F) -> Self::F {
        with_isa!(_mm256_max_ps(lo, x))
    }
    #[inline(always)]
    fn at_most(self, x: Self::F, hi: Self::F) -> Self::F {
        with_isa!(_mm256_min_ps(hi, x))
    }
    #[inline(always)]
    fn f32_to_bits(self, a: __m256) -> __m256i {
        with_isa!(_mm256_castps_si256(a))
    }
    #[inline(always)]
    fn bits_to_f32(self, a: __m256i) -> __m256 {
        with_isa!(_mm256_castsi256_ps(a))
    }
    #[inline(always)]
    fn to_f32(self, a: __m256i) -> __m256 {
        with_isa!(_mm256_cvtepi32_ps(a))
    }
    #[inline(always)]
    fn add_i(self, a: __m256i, b: __m256i) -> __m256i {
        with_isa!(_mm256_add_epi32(a, b))
    }
    #[inline(always)]
    fn sub_i(self, a: __m256i, b: __m256i) -> __m256i {
        with_isa!(_mm256_sub_epi32(a, b))
    }
    #[inline(always)]
    fn and_i(self, a: __m256i, b: __m256i) -> __m256i {
        with_isa!(_mm256_and_si256(a, b))
    }
    #[inline(always)]
    fn shr_i(self, a: __m256i, n: u32) -> __m256i {
        with_isa!(_mm256_sra_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn shl_i(self, a: __m256i, n: u32) -> __m256i {
        with_isa!(_mm256_sll_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn eq_i(self, a: __m256i, v: i32) -> __m256 {
        with_isa!(_mm256_castsi256_ps(_mm256_cmpeq_epi32(
            a,
            _mm256_set1_epi32(v)
        )))
    }
    #[inline(always)]
    fn any_at_least(self, a: __m256i, v: u32) -> bool {
        with_isa!({
            let at_least = _mm256_cmpeq_epi32(_mm256_max_epu32(a, _mm256_set1_epi32(v as i32)), a);
            _mm256_movemask_epi8(at_least) != 0
        })
    }
    /// Rows loaded masked to `w` floats, then the 8 × 8 transpose ([`transpose8`]).
    #[inline(always)]
    unsafe fn transpose_in(
        self,
        src: *const f32,
        add: Option<*const f32>,
        stride: usize,
        w: usize,
        dst: *mut f32,
    ) {
        with_isa!({
            let mask = lanes_below(w);
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm256_maskload_ps(src.add(i * stride), mask);
                if let Some(a) = add {
                    *v = _mm256_add_ps(*v, _mm256_maskload_ps(a.add(i * stride), mask));
                }
            }
            for (c, v) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(8 * c), v);
            }
        })
    }
    /// The 8 × 8 transpose, each row stored to its first `w` floats ([`store_lanes_below`]).
    #[inline(always)]
    unsafe fn transpose_out(
        self,
        src: *const f32,
        scale: __m256,
        w: usize,
        dst: *mut f32,
        stride: usize,
    ) {
        with_isa!({
            let mut c = [_mm256_setzero_ps(); 8];
            for (i, v) in c.iter_mut().enumerate() {
                *v = _mm256_mul_ps(_mm256_loadu_ps(src.add(8 * i)), scale);
            }
            let rows = transpose8(c);
            if w == 8 {
                for (r, v) in rows.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add(r * stride), v);
                }
            } else {
                for (r, v) in rows.into_iter().enumerate() {
                    store_lanes_below(dst.add(r * stride), v, w);
                }
            }
        })
    }
    /// `C ≤ AVX2_PERMUTE_MAX`: the `C` registers of the block, each column assembled from
    /// one lane permute per register and blends (`C²` permutes); wider: one 8 × 8 transpose
    /// per 8 columns of the rows, the last loaded masked to the row's end (at 10 classes
    /// faster than the gathers before).
    #[inline(always)]
    unsafe fn load_columns<const C: usize>(
        self,
        p: *const f32,
        add: Option<*const f32>,
    ) -> [__m256; C] {
        with_isa!({
            let mut out = [_mm256_setzero_ps(); C];
            if C <= AVX2_PERMUTE_MAX {
                let mut regs = [_mm256_setzero_ps(); C];
                for (k, r) in regs.iter_mut().enumerate() {
                    *r = _mm256_loadu_ps(p.add(8 * k));
                    if let Some(a) = add {
                        *r = _mm256_add_ps(*r, _mm256_loadu_ps(a.add(8 * k)));
                    }
                }
                for (j, o) in out.iter_mut().enumerate() {
                    let q = _mm256_loadu_si256(Columns::<8, C>::POS[j].as_ptr().cast());
                    let idx = _mm256_and_si256(q, _mm256_set1_epi32(7));
                    let reg = _mm256_srli_epi32::<3>(q);
                    for (k, &r) in regs.iter().enumerate() {
                        let from_k = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                            reg,
                            _mm256_set1_epi32(k as i32),
                        ));
                        *o = _mm256_blendv_ps(*o, _mm256_permutevar8x32_ps(r, idx), from_k);
                    }
                }
            } else {
                for j0 in (0..C).step_by(8) {
                    let w = (C - j0).min(8);
                    let mask = lanes_below(w);
                    let mut rows = [_mm256_setzero_ps(); 8];
                    for (r, v) in rows.iter_mut().enumerate() {
                        *v = _mm256_maskload_ps(p.add(C * r + j0), mask);
                        if let Some(a) = add {
                            *v = _mm256_add_ps(*v, _mm256_maskload_ps(a.add(C * r + j0), mask));
                        }
                    }
                    out[j0..j0 + w].copy_from_slice(&transpose8(rows)[..w]);
                }
            }
            out
        })
    }
    /// `C ≤ AVX2_PERMUTE_MAX`: each output register assembled from one permute per column;
    /// wider: the transposes back, the last 8 columns stored to the row's end
    /// ([`store_lanes_below`]).
    #[inline(always)]
    unsafe fn store_columns<const C: usize>(self, p: *mut f32, v: &[__m256; C]) {
        with_isa!({
            if C <= AVX2_PERMUTE_MAX {
                for k in 0..C {
                    let row = _mm256_loadu_si256(Columns::<8, C>::ROW[k].as_ptr().cast());
                    let col = _mm256_loadu_si256(Columns::<8, C>::COL[k].as_ptr().cast());
                    let mut out = _mm256_setzero_ps();
                    for (j, &g) in v.iter().enumerate() {
                        let from_j = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                            col,
                            _mm256_set1_epi32(j as i32),
                        ));
                        out = _mm256_blendv_ps(out, _mm256_permutevar8x32_ps(g, row), from_j);
                    }
                    _mm256_storeu_ps(p.add(8 * k), out);
                }
            } else {
                for j0 in (0..C).step_by(8) {
                    let w = (C - j0).min(8);
                    let mut cols = [_mm256_setzero_ps(); 8];
                    cols[..w].copy_from_slice(&v[j0..j0 + w]);
                    for (r, row) in transpose8(cols).into_iter().enumerate() {
                        store_lanes_below(p.add(C * r + j0), row, w);
                    }
                }
            }
        })
    }
}

/// Widest rows that [`Avx2`] transposes with permutes rather than 8 × 8 transposes.
#[cfg(target_arch = "x86_64")]
const AVX2_PERMUTE_MAX: usize = 4;

/// Lanes `0 .. w` of `v` (`w ≤ 8`) to `p`, nothing past them, in plain stores of 4, 2 and 1
/// floats: AVX's masked store (`vmaskmovps`) is microcoded on AMD's cores, about 8.5 cycles
/// each against 0.75 for a 2-float store (Zen 4, measured), where a masked load costs what a
/// plain one does.
///
/// # Safety
/// AVX available; `p` valid for `w` writes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn store_lanes_below(p: *mut f32, v: __m256, w: usize) {
    with_isa!({
        if w >= 8 {
            _mm256_storeu_ps(p, v);
            return;
        }
        let (mut p, mut w, mut q) = (p, w, _mm256_castps256_ps128(v));
        if w >= 4 {
            _mm_storeu_ps(p, q);
            (p, w, q) = (p.add(4), w - 4, _mm256_extractf128_ps::<1>(v));
        }
        if w >= 2 {
            _mm_storel_pd(p.cast(), _mm_castps_pd(q));
            (p, w, q) = (p.add(2), w - 2, _mm_movehl_ps(q, q));
        }
        if w == 1 {
            _mm_store_ss(p, q);
        }
    })
}

/// An AVX2 lane mask: lanes `0 .. w` set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes_below(w: usize) -> __m256i {
    with_isa!(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(w as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
    ))
}

/// Lane `r` of output `c` is lane `c` of input `r`: three rounds of 8 shuffles (pairs, quads,
/// halves). Only inlined into functions compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    with_isa!({
        let mut t = [_mm256_setzero_ps(); 8];
        for i in (0..8).step_by(2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        // u[4h + q]: rows 4h..4h+4, columns q, q + 4 (one per 128-bit half).
        let mut u = [_mm256_setzero_ps(); 8];
        for i in (0..8).step_by(2) {
            let (h, q) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + q / 2], t[4 * h + q / 2 + 2]);
            u[i] = _mm256_shuffle_ps::<0x44>(a, b);
            u[i + 1] = _mm256_shuffle_ps::<0xEE>(a, b);
        }
        let mut w = [_mm256_setzero_ps(); 8];
        for (c, x) in w.iter_mut().enumerate() {
            let (a, b) = (u[c % 4], u[4 + c % 4]);
            *x = if c < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            };
        }
        w
    })
}

/// AVX-512F: 16 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The token, where the CPU has AVX-512F.
    pub(super) fn new() -> Option<Avx512> {
        super::has_avx512().then_some(Avx512(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const LANES: usize = 16;
    type F = __m512;
    type I = __m512i;
    type M = __mmask16;
    type H = __m256;

    #[inline(always)]
    fn zero_h(self) -> __m256 {
        with_isa!(_mm256_setzero_ps())
    }
    /// The low 8 lanes, then the high 8.
    #[inline(always)]
    fn add_in_sum_order(self, acc: __m256, v: __m512, row: usize) -> __m256 {
        debug_assert_eq!(row % 8, 0);
        with_isa!({
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_add_ps(_mm256_add_ps(acc, _mm512_castps512_ps256(v)), high)
        })
    }
    #[inline(always)]
    fn h_to_array(self, acc: __m256) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        with_isa!(_mm256_storeu_ps(out.as_mut_ptr(), acc));
        out
    }

    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        with_isa!(_mm512_set1_ps(v))
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> __m512i {
        with_isa!(_mm512_set1_epi32(v))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        with_isa!(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        with_isa!(_mm512_storeu_ps(p, v))
    }
    #[inline(always)]
    unsafe fn load_u32(self, p: *const u32) -> __m512i {
        with_isa!(_mm512_loadu_si512(p.cast()))
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_add_ps(a, b))
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_sub_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_mul_ps(a, b))
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_div_ps(a, b))
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        with_isa!(_mm512_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_max_ps(a, b))
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        with_isa!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    fn gt(self, a: __m512, b: __m512) -> __mmask16 {
        with_isa!(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b))
    }
    #[inline(always)]
    fn eq(self, a: __m512, b: __m512) -> __mmask16 {
        with_isa!(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        with_isa!(_mm512_mask_blend_ps(m, b, a))
    }
    #[inline(always)]
    fn at_least(self, x: Self::F, lo: Self::F) -> Self::F {
        with_isa!(_mm512_max_ps(lo, x))
    }
    #[inline(always)]
    fn at_most(self, x: Self::F, hi: Self::F) -> Self::F {
        with_isa!(_mm512_min_ps(hi, x))
    }
    #[inline(always)]
    fn f32_to_bits(self, a: __m512) -> __m512i {
        with_isa!(_mm512_castps_si512(a))
    }
    #[inline(always)]
    fn bits_to_f32(self, a: __m512i) -> __m512 {
        with_isa!(_mm512_castsi512_ps(a))
    }
    #[inline(always)]
    fn to_f32(self, a: __m512i) -> __m512 {
        with_isa!(_mm512_cvtepi32_ps(a))
    }
    #[inline(always)]
    fn add_i(self, a: __m512i, b: __m512i) -> __m512i {
        with_isa!(_mm512_add_epi32(a, b))
    }
    #[inline(always)]
    fn sub_i(self, a: __m512i, b: __m512i) -> __m512i {
        with_isa!(_mm512_sub_epi32(a, b))
    }
    #[inline(always)]
    fn and_i(self, a: __m512i, b: __m512i) -> __m512i {
        with_isa!(_mm512_and_si512(a, b))
    }
    #[inline(always)]
    fn shr_i(self, a: __m512i, n: u32) -> __m512i {
        with_isa!(_mm512_sra_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn shl_i(self, a: __m512i, n: u32) -> __m512i {
        with_isa!(_mm512_sll_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn eq_i(self, a: __m512i, v: i32) -> __mmask16 {
        with_isa!(_mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32(v)))
    }
    #[inline(always)]
    fn any_at_least(self, a: __m512i, v: u32) -> bool {
        with_isa!(_mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(v as i32)) != 0)
    }
    /// `vscalefps`: `q · 2^kf` rounded once, the product the two multiplies give.
    #[inline(always)]
    fn scale_pow2(self, q: __m512, kf: __m512, _k: __m512i) -> __m512 {
        with_isa!(_mm512_scalef_ps(q, kf))
    }
    /// Rows loaded masked to `w` floats, then the 16 × 16 transpose ([`transpose16`]).
    #[inline(always)]
    unsafe fn transpose_in(
        self,
        src: *const f32,
        add: Option<*const f32>,
        stride: usize,
        w: usize,
        dst: *mut f32,
    ) {
        with_isa!({
            let mask = ((1u32 << w) - 1) as __mmask16;
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask, src.add(i * stride));
                if let Some(a) = add {
                    *v = _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, a.add(i * stride)));
                }
            }
            for (c, v) in transpose16(r).into_iter().enumerate() {
                _mm512_storeu_ps(dst.add(16 * c), v);
            }
        })
    }
    /// The 16 × 16 transpose, each row stored masked to `w` floats.
    #[inline(always)]
    unsafe fn transpose_out(
        self,
        src: *const f32,
        scale: __m512,
        w: usize,
        dst: *mut f32,
        stride: usize,
    ) {
        with_isa!({
            let mask = ((1u32 << w) - 1) as __mmask16;
            let mut c = [_mm512_setzero_ps(); 16];
            for (i, v) in c.iter_mut().enumerate() {
                *v = _mm512_mul_ps(_mm512_loadu_ps(src.add(16 * i)), scale);
            }
            for (r, v) in transpose16(c).into_iter().enumerate() {
                _mm512_mask_storeu_ps(dst.add(r * stride), mask, v);
            }
        })
    }
    /// The `C` registers of the block: up to 6 columns each column assembled from one
    /// two-register permute per pair of registers (`C·⌈C/2⌉` permutes; faster than gathers),
    /// above that one 16 × 16 transpose (at 10 classes 18 % faster, at 16 1.9×; at 5 and 6
    /// the permutes were faster).
    #[inline(always)]
    unsafe fn load_columns<const C: usize>(
        self,
        p: *const f32,
        add: Option<*const f32>,
    ) -> [__m512; C] {
        if C > 6 {
            // One 16 × 16 transpose of the rows loaded masked to their C floats.
            return with_isa!({
                let mask = ((1u32 << C) - 1) as __mmask16;
                let mut rows = [_mm512_setzero_ps(); 16];
                for (r, v) in rows.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(mask, p.add(C * r));
                    if let Some(a) = add {
                        *v = _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, a.add(C * r)));
                    }
                }
                let cols = transpose16(rows);
                let mut out = [_mm512_setzero_ps(); C];
                out.copy_from_slice(&cols[..C]);
                out
            });
        }
        with_isa!({
            let mut regs = [_mm512_setzero_ps(); C];
            for (k, r) in regs.iter_mut().enumerate() {
                *r = _mm512_loadu_ps(p.add(16 * k));
                if let Some(a) = add {
                    *r = _mm512_add_ps(*r, _mm512_loadu_ps(a.add(16 * k)));
                }
            }
            let mut out = [_mm512_setzero_ps(); C];
            for (j, o) in out.iter_mut().enumerate() {
                let q = _mm512_loadu_si512(Columns::<16, C>::POS[j].as_ptr().cast());
                let pair = _mm512_srli_epi32::<5>(q);
                for t in 0..C.div_ceil(2) {
                    let hi = regs[(2 * t + 1).min(C - 1)];
                    let from_t = _mm512_cmpeq_epi32_mask(pair, _mm512_set1_epi32(t as i32));
                    // The permute reads the low 5 bits of q: the position in the pair.
                    let v = _mm512_permutex2var_ps(regs[2 * t], q, hi);
                    *o = _mm512_mask_blend_ps(from_t, *o, v);
                }
            }
            out
        })
    }
    /// Up to 6 columns each output register assembled from one two-register permute per
    /// pair of columns; above that the transpose back.
    #[inline(always)]
    unsafe fn store_columns<const C: usize>(self, p: *mut f32, v: &[__m512; C]) {
        if C > 6 {
            // The transpose back, each row stored masked to its C floats.
            return with_isa!({
                let mask = ((1u32 << C) - 1) as __mmask16;
                let mut cols = [_mm512_setzero_ps(); 16];
                cols[..C].copy_from_slice(v);
                for (r, row) in transpose16(cols).into_iter().enumerate() {
                    _mm512_mask_storeu_ps(p.add(C * r), mask, row);
                }
            });
        }
        with_isa!({
            for k in 0..C {
                let row = _mm512_loadu_si512(Columns::<16, C>::ROW[k].as_ptr().cast());
                let col = _mm512_loadu_si512(Columns::<16, C>::COL[k].as_ptr().cast());
                // Index into the pair (v[2t], v[2t + 1]): the row, plus 16 for the second.
                let idx = _mm512_add_epi32(
                    row,
                    _mm512_slli_epi32::<4>(_mm512_and_si512(col, _mm512_set1_epi32(1))),
                );
                let pair = _mm512_srli_epi32::<1>(col);
                let mut out = _mm512_setzero_ps();
                for t in 0..C.div_ceil(2) {
                    let hi = v[(2 * t + 1).min(C - 1)];
                    let from_t = _mm512_cmpeq_epi32_mask(pair, _mm512_set1_epi32(t as i32));
                    let w = _mm512_permutex2var_ps(v[2 * t], idx, hi);
                    out = _mm512_mask_blend_ps(from_t, out, w);
                }
                _mm512_storeu_ps(p.add(16 * k), out);
            }
        })
    }
}

/// Lane `r` of output `c` is lane `c` of input `r`: four rounds of 16 shuffles (pairs, quads,
/// then 128-bit lanes twice). Only inlined into functions compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    with_isa!({
        let mut t = [_mm512_setzero_ps(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in (0..16).step_by(2) {
            let (h, q) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + q / 2], t[4 * h + q / 2 + 2]);
            u[i] = _mm512_shuffle_ps::<0x44>(a, b);
            u[i + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for (i, x) in v.iter_mut().enumerate() {
            let (h, q) = (i / 8, i % 8);
            let (a, b) = (u[8 * h + q % 4], u[8 * h + q % 4 + 4]);
            *x = if q < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            };
        }
        let mut w = [_mm512_setzero_ps(); 16];
        for (c, x) in w.iter_mut().enumerate() {
            let (a, b) = (v[c % 8], v[8 + c % 8]);
            *x = if c < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            };
        }
        w
    })
}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x`: `x = k·ln 2 + r` with `k = round(x / ln 2)` (ln 2 split in a high and a low part,
/// Cody–Waite), `|r| ≤ ln 2 / 2`, and `e^r` from a degree-6 Taylor polynomial in Horner
/// form: relative error below 3 ulp over the normal range. The rounding of `x / ln 2`, the
/// reduction and each Horner step are fused multiply-adds ([`Simd::mul_add`], rounded once
/// on every path): 11 operations between the clamp and the scaling, where separate
/// multiplies and adds took 20. Inputs are clamped to `[-104, 89]` (where `e^x` is already 0
/// or infinite in f32), and `2^k` is applied rounding once ([`Simd::scale_pow2`]: `scalef` on
/// AVX-512, else two normal powers of two, or one where every lane's product is normal), so
/// underflow gives 0 (through denormals) and overflow infinity, as `expf` does. NaN
/// propagates.
#[inline(always)]
pub(super) fn exp<S: Simd>(s: S, x: S::F) -> S::F {
    // Clamps that let NaN through.
    let x = s.at_most(s.at_least(x, s.splat(-104.0)), s.splat(89.0));
    // Round to nearest through the 1.5·2^23 trick: the integer k lands in the low mantissa
    // bits of `t`, read with integer arithmetic (no float→int conversion).
    const SHIFTER: f32 = 12_582_912.0;
    let t = s.mul_add(x, s.splat(std::f32::consts::LOG2_E), s.splat(SHIFTER));
    let kf = s.sub(t, s.splat(SHIFTER));
    let k = s.sub_i(s.f32_to_bits(t), s.splat_i(SHIFTER.to_bits() as i32));
    let r = s.mul_add(kf, s.splat(-LN2_HI), x);
    let r = s.mul_add(kf, s.splat(-LN2_LO), r);
    let mut q = s.splat(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        q = s.mul_add(r, q, s.splat(c));
    }
    s.scale_pow2(q, kf, k)
}

/// `q · 2^k` as two normal powers of two, so that neither multiply wraps the exponent field,
/// underflow rounds once into a denormal or 0 and overflow gives ∞.
#[inline(always)]
fn scale_pow2_twice<S: Simd>(s: S, q: S::F, k: S::I) -> S::F {
    let half = s.shr_i(k, 1);
    s.mul(s.mul(q, pow2(s, half)), pow2(s, s.sub_i(k, half)))
}

/// `2^e` for `e ∈ [-126, 127]`, written into the exponent field.
#[inline(always)]
fn pow2<S: Simd>(s: S, e: S::I) -> S::F {
    s.bits_to_f32(s.shl_i(s.add_i(e, s.splat_i(127)), 23))
}

/// The bits of `√½` in f32: mantissas are reduced to `[√½, √2)`.
const SQRT_HALF_BITS: i32 = 0x3f35_04f3;

/// `ln x` of a softmax's denominator `x = Σ_j e^{u_j - max u}`, which is at least 1 (its
/// largest term is `e^0`), or `+∞` or NaN (both returned as they are).
///
/// `x = 2^k · m` with `m ∈ [√½, √2)`, `f = m - 1`, `s = f / (2 + f)`, and
/// `ln(1 + f) = 2·atanh(s) = f - (f²/2 - s·(f²/2 + R))` with `R = Σ_{n=1..5} 2s^{2n}/(2n+1)`
/// (`|s| ≤ 0.172`: truncation below 2^-28), plus `k·ln 2` in a high part that `k` multiplies
/// exactly and a low part. The large term `f` is exact, the rest a small correction: error
/// below 1 ulp (tested against f64 over every 4099th f32 from 1 up). The Horner steps and the
/// two `k·ln 2` terms are fused multiply-adds ([`Simd::mul_add`], rounded once on every
/// path). One division, no table: libm's `logf` is a call per value, and at 2 or 3 classes
/// the cross-entropy spent most of its time there. Without denormals, zero or negative
/// numbers to handle, a row's `ln` costs about one exponential.
#[inline(always)]
pub(super) fn ln_of_sum<S: Simd>(s: S, x: S::F) -> S::F {
    // Adding 1 - √½ to the bits carries into the exponent field exactly when the mantissa is
    // at least √2; the field is then k + 127.
    let u = s.add_i(
        s.f32_to_bits(x),
        s.splat_i(1.0f32.to_bits() as i32 - SQRT_HALF_BITS),
    );
    let k = s.to_f32(s.sub_i(s.shr_i(u, 23), s.splat_i(127)));
    let m = s.bits_to_f32(s.add_i(
        s.and_i(u, s.splat_i(0x007f_ffff)),
        s.splat_i(SQRT_HALF_BITS),
    ));
    let f = s.sub(m, s.splat(1.0));
    let q = s.div(f, s.add(s.splat(2.0), f));
    let z = s.mul(q, q);
    let mut r = s.splat(2.0 / 11.0);
    for c in [2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0] {
        r = s.mul_add(z, r, s.splat(c));
    }
    let r = s.mul(z, r);
    let hfsq = s.mul(s.splat(0.5), s.mul(f, f));
    let tail = s.mul_add(q, s.add(hfsq, r), s.mul(k, s.splat(LN2_LO)));
    let y = s.mul_add(k, s.splat(LN2_HI), s.sub(f, s.sub(hfsq, tail)));
    s.select(s.lt(x, s.splat(f32::INFINITY)), y, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th f32 bit pattern (both signs, denormals, ±∞, NaNs), the special values,
    /// and a fine sweep of `[lo, hi]`.
    fn inputs(step: u32, lo: f32, hi: f32) -> Vec<f32> {
        let mut xs: Vec<f32> = (0..u32::MAX / step)
            .map(|i| f32::from_bits(i * step))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1.0,
            2.0,
            -104.0,
            89.0,
            88.7,
            -87.4,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        xs.extend((0..1 << 20).map(|i| lo + i as f32 * ((hi - lo) / (1 << 20) as f32)));
        xs.resize(xs.len().next_multiple_of(16), 1.0);
        xs
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// `f` on [`Lanes8`] and on every vector instruction set this CPU has gives `f` on
    /// [`Scalar`]'s bits.
    fn vector_paths_match(
        xs: &[f32],
        scalar: impl Fn(f32) -> f32,
        lanes8: impl Fn(Lanes8, [f32; 8]) -> [f32; 8],
        #[cfg(target_arch = "x86_64")] avx2: impl Fn(Avx2, __m256) -> __m256,
        #[cfg(target_arch = "x86_64")] avx512: impl Fn(Avx512, __m512) -> __m512,
    ) {
        let want: Vec<f32> = xs.iter().map(|&x| scalar(x)).collect();
        for (x, w) in xs.chunks_exact(8).zip(want.chunks_exact(8)) {
            let x: [f32; 8] = x.try_into().expect("8 values");
            let got = lanes8(Lanes8, x);
            for l in 0..8 {
                assert!(
                    same(got[l], w[l]),
                    "Lanes8 at {:e}: {:e} against {:e}",
                    x[l],
                    got[l],
                    w[l]
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut got = vec![0.0f32; xs.len()];
            if let Some(isa) = Avx2::new() {
                for (x, g) in xs.chunks_exact(8).zip(got.chunks_exact_mut(8)) {
                    // SAFETY: 8 values each.
                    unsafe { isa.store(g.as_mut_ptr(), avx2(isa, isa.load(x.as_ptr()))) };
                }
                for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                    assert!(same(*g, *w), "AVX2 at {x:e}: {g:e} against {w:e}");
                }
            }
            if let Some(isa) = Avx512::new() {
                for (x, g) in xs.chunks_exact(16).zip(got.chunks_exact_mut(16)) {
                    // SAFETY: 16 values each.
                    unsafe { isa.store(g.as_mut_ptr(), avx512(isa, isa.load(x.as_ptr()))) };
                }
                for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                    assert!(same(*g, *w), "AVX-512 at {x:e}: {g:e} against {w:e}");
                }
            }
        }
    }

    /// `transpose_in` on `isa` gathers each row's first `w` floats (plus `add`'s) into its
    /// column vectors and zeros the rest, reading nothing past them (the rows sit at the end
    /// of their buffers); `transpose_out` puts them back, each row times its lane of the
    /// scale, writing nothing else.
    fn check_transpose<S: Simd>(isa: S) {
        let n = S::LANES;
        let ss = n + 5;
        for w in 1..=n {
            let len = (n - 1) * ss + w;
            let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let add: Vec<f32> = (0..len).map(|i| 0.5 * i as f32).collect();
            for with_add in [false, true] {
                let mut t = vec![-1.0f32; n * n];
                let a = with_add.then_some(add.as_ptr());
                // SAFETY: row r's w floats end inside the buffers; t holds n vectors.
                unsafe { isa.transpose_in(src.as_ptr(), a, ss, w, t.as_mut_ptr()) };
                for (i, &v) in t.iter().enumerate() {
                    let (c, r) = (i / n, i % n);
                    let want = match c < w {
                        true if with_add => src[r * ss + c] + add[r * ss + c],
                        true => src[r * ss + c],
                        false => 0.0,
                    };
                    assert_eq!(v, want, "{n} lanes, width {w}: row {r}, column {c}");
                }
                let lanes: Vec<f32> = (0..n).map(|r| 1.0 + 0.25 * r as f32).collect();
                // SAFETY: `lanes` holds one vector.
                let scale = unsafe { isa.load(lanes.as_ptr()) };
                let mut back = vec![-1.0f32; len];
                // SAFETY: as above.
                unsafe { isa.transpose_out(t.as_ptr(), scale, w, back.as_mut_ptr(), ss) };
                for (i, &v) in back.iter().enumerate() {
                    let (r, c) = (i / ss, i % ss);
                    let want = if c < w { t[c * n + r] * lanes[r] } else { -1.0 };
                    assert_eq!(v, want, "{n} lanes, width {w}: back to row {r}, column {c}");
                }
            }
        }
    }

    #[test]
    fn transposes_move_every_float_once() {
        check_transpose(Scalar);
        check_transpose(Lanes8);
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = Avx2::new() {
            check_transpose(isa);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = Avx512::new() {
            check_transpose(isa);
        }
    }

    #[test]
    fn exp_and_ln_give_the_scalar_bits_on_every_path() {
        vector_paths_match(
            &inputs(997, -104.0, 90.0),
            |x| exp(Scalar, x),
            exp,
            #[cfg(target_arch = "x86_64")]
            exp,
            #[cfg(target_arch = "x86_64")]
            exp,
        );
        vector_paths_match(
            &from_one_up(inputs(997, 1.0, 1000.0)),
            |x| ln_of_sum(Scalar, x),
            ln_of_sum,
            #[cfg(target_arch = "x86_64")]
            ln_of_sum,
            #[cfg(target_arch = "x86_64")]
            ln_of_sum,
        );
    }

    /// The inputs `ln_of_sum` takes: from 1 up, `+∞` and NaN (the specials first, then whole
    /// vectors of the rest).
    fn from_one_up(xs: Vec<f32>) -> Vec<f32> {
        let mut xs: Vec<f32> = [f32::INFINITY, f32::NAN, 1.0]
            .into_iter()
            .chain(xs.into_iter().filter(|&x| x >= 1.0 || x.is_nan()))
            .collect();
        xs.truncate(xs.len() / 16 * 16);
        xs
    }

    #[test]
    fn ln_is_within_one_ulp() {
        let mut rounded = 0usize;
        let mut finite = 0usize;
        for x in from_one_up(inputs(4099, 1.0, 1000.0)) {
            let got = ln_of_sum(Scalar, x);
            if x.is_nan() {
                assert!(got.is_nan(), "ln({x:e}) = {got:e}");
            } else if x == f32::INFINITY {
                assert_eq!(got, f32::INFINITY);
            } else {
                let want = (x as f64).ln();
                if want == 0.0 {
                    assert_eq!(got, 0.0, "ln(1)");
                    continue;
                }
                let err = (got as f64 - want).abs();
                // The spacing of f32 at the exact result (never denormal here).
                let ulp = 2f64.powf(want.abs().log2().floor() - 23.0);
                assert!(err < ulp, "ln({x:e}) = {got:e}, want {want:e}");
                finite += 1;
                rounded += usize::from(got == want as f32);
            }
        }
        // Most results are the correctly rounded ones.
        assert!(
            rounded * 100 > finite * 95,
            "{rounded} of {finite} correctly rounded"
        );
    }
}
