//! This machine's matrix-product rate, so that `benches/speed.sh` can put pathc's GFLOP/s
//! against it: the two kernels pathc's f32 products may run on (`plan::exec::sgemm_into`), the
//! `gemm` crate's (faer's) and nalgebra's own `a * b` (the `matrixmultiply` crate, also its f64
//! products), on a square product, the shape of the vocabulary-wide products, and the shapes the
//! plan's steps run at GPT-2 small's sizes. pathc picks matrixmultiply where its AVX-512 kernel
//! runs and gemm elsewhere (`F32Kernel::detect`); the first line printed says which it picked
//! here.
//!
//! A kernel's blocking may depend on the product's shape and strides, so a small product (64 ×
//! 64 from 768-long sums) need not be the same bits as that block of a larger product (768 ×
//! 768): pathc's executor gives it the same shapes and strides whether the weights are in memory or
//! streamed from the file, from a `.pt` or a `.safetensors`, on any number of threads, so that its
//! statistics are the same bits in every case (tests/plan.rs, tests/torch.rs).
//!
//! `cargo bench --bench gemm` prints `{"pathc_f32_kernel"}`, then one JSON line per case:
//! `{"case", "kernel", "dtype", "threads", "m", "k", "n", "seconds", "gflops"}`, a GFLOP being
//! 10⁹ floating-point operations (a multiply-add counts 2). Each product runs on one thread;
//! `pathc stats` runs independent products on every core (`parallel_map`), so each shape is also
//! timed with one product per core at once, which is the rate pathc can reach.

use std::time::Instant;

use nalgebra::{DMatrix, Scalar};
use num_traits::{One, Zero};

/// An entry both kernels multiply.
trait Float: Scalar + Zero + One + Copy {}
impl Float for f32 {}
impl Float for f64 {}

/// `a · b` by the gemm crate on this thread (both column-major, contiguous).
fn gemm_product<T: Float>(a: &DMatrix<T>, b: &DMatrix<T>) -> DMatrix<T> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut c = DMatrix::<T>::zeros(m, n);
    let s = |x: usize| x as isize;
    // SAFETY: `a` (m × k), `b` (k × n) and `c` (m × n) are column-major with column strides m, k
    // and m; `c` overlaps neither and is only written (`read_dst` false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            s(m),
            1,
            false,
            a.as_ptr(),
            s(m),
            1,
            b.as_ptr(),
            s(k),
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
    c
}

/// Deterministic, non-trivial entries (the values do not matter to the kernel's speed).
fn filled<T: Scalar + From<f32>>(rows: usize, cols: usize) -> DMatrix<T> {
    DMatrix::from_fn(rows, cols, |i, j| T::from(((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5))
}

#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    Nalgebra,
    Gemm,
}

/// Best of `repeat` timings of `c = a · b` on each of `threads` threads at once (each thread its
/// own matrices), in seconds.
fn time_product<T>(kernel: Kernel, (m, k, n): (usize, usize, usize), threads: usize, repeat: usize) -> f64
where
    T: Float + From<f32> + nalgebra::ClosedAddAssign + nalgebra::ClosedMulAssign + Send + Sync,
{
    let mut best = f64::INFINITY;
    let inputs: Vec<(DMatrix<T>, DMatrix<T>)> = (0..threads).map(|_| (filled(m, k), filled(k, n))).collect();
    for _ in 0..repeat {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (a, b) in &inputs {
                scope.spawn(move || match kernel {
                    Kernel::Nalgebra => drop(std::hint::black_box(a * b)),
                    Kernel::Gemm => drop(std::hint::black_box(gemm_product(a, b))),
                });
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

fn report<T>(kernel: Kernel, dtype: &str, shape: (usize, usize, usize), threads: usize)
where
    T: Float + From<f32> + nalgebra::ClosedAddAssign + nalgebra::ClosedMulAssign + Send + Sync,
{
    let (m, k, n) = shape;
    // About a second per case, at least twice.
    let repeat = ((2e11 / (2.0 * (m * k * n) as f64)) as usize).clamp(2, 50);
    let seconds = time_product::<T>(kernel, shape, threads, repeat);
    let gflops = 2.0 * (m * k * n * threads) as f64 / seconds / 1e9;
    let name = match kernel {
        Kernel::Nalgebra => "nalgebra",
        Kernel::Gemm => "gemm",
    };
    println!(
        "{{\"case\":\"{m}x{k}x{n}\",\"kernel\":\"{name}\",\"dtype\":\"{dtype}\",\"threads\":{threads},\"m\":{m},\"k\":{k},\"n\":{n},\"seconds\":{seconds:.6},\"gflops\":{gflops:.2}}}"
    );
}

fn main() {
    // `cargo bench --no-run` (CI) builds this; running it takes about a minute.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{{\"pathc_f32_kernel\":\"{}\"}}", pathc::plan::exec::F32Kernel::detect().name());
    // A square product; pathc stats' vocabulary-wide products as one product ([d_vocab, d_model]
    // against [d_model, d_model]) and as the plan runs them (a chunk of 1,024 tokens); a head's
    // `W_Eᵀ W_E · W_Q[h]`; a pair's `d_head × d_model × d_head`.
    let shapes = [(768, 768, 768), (50257, 768, 768), (768, 1024, 768), (768, 768, 64), (64, 768, 64)];
    for threads in [1, cores] {
        for shape in shapes {
            for kernel in [Kernel::Nalgebra, Kernel::Gemm] {
                report::<f32>(kernel, "f32", shape, threads);
                if shape == (768, 768, 768) || shape == (50257, 768, 768) {
                    report::<f64>(kernel, "f64", shape, threads);
                }
            }
        }
    }
}
