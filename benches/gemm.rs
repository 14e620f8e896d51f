//! This machine's matrix-product rate with the kernels pathc uses (nalgebra's, via the
//! `matrixmultiply` crate), so that `benches/speed.sh` can put pathc's GFLOP/s against it.
//!
//! `cargo bench --bench gemm` prints one JSON line per case: `{"case", "dtype", "threads",
//! "m", "k", "n", "seconds", "gflops"}`, a GFLOP being 10⁹ floating-point operations (a
//! multiply-add counts 2). nalgebra's products run on one thread; `pathc stats` runs independent
//! products on every core (`parallel_map`), so each shape is also timed with one product per
//! core at once, which is the rate pathc can reach.

use std::time::Instant;

use nalgebra::{DMatrix, Scalar};
use num_traits::{One, Zero};

/// Deterministic, non-trivial entries (the values do not matter to the kernel's speed).
fn filled<T: Scalar + From<f32>>(rows: usize, cols: usize) -> DMatrix<T> {
    DMatrix::from_fn(rows, cols, |i, j| T::from(((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5))
}

/// Best of `repeat` timings of `c = a · b` on each of `threads` threads at once (each thread its
/// own matrices), in seconds.
fn time_product<T>(m: usize, k: usize, n: usize, threads: usize, repeat: usize) -> f64
where
    T: Scalar + From<f32> + Zero + One + Copy + nalgebra::ClosedAddAssign + nalgebra::ClosedMulAssign + Send + Sync,
{
    let mut best = f64::INFINITY;
    let inputs: Vec<(DMatrix<T>, DMatrix<T>)> = (0..threads).map(|_| (filled(m, k), filled(k, n))).collect();
    for _ in 0..repeat {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (a, b) in &inputs {
                scope.spawn(move || std::hint::black_box(a * b));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

fn report<T>(case: &str, dtype: &str, (m, k, n): (usize, usize, usize), threads: usize, repeat: usize)
where
    T: Scalar + From<f32> + Zero + One + Copy + nalgebra::ClosedAddAssign + nalgebra::ClosedMulAssign + Send + Sync,
{
    let seconds = time_product::<T>(m, k, n, threads, repeat);
    let gflops = 2.0 * (m * k * n * threads) as f64 / seconds / 1e9;
    println!(
        "{{\"case\":\"{case}\",\"dtype\":\"{dtype}\",\"threads\":{threads},\"m\":{m},\"k\":{k},\"n\":{n},\"seconds\":{seconds:.6},\"gflops\":{gflops:.2}}}"
    );
}

fn main() {
    // `cargo bench --no-run` (CI) builds this; running it takes ~30 s.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let square = (768, 768, 768);
    // pathc stats' vocabulary-wide products: [d_vocab, d_model] against [d_model, d_model].
    let vocab = (50257, 768, 768);
    for threads in [1, cores] {
        report::<f64>("768x768x768", "f64", square, threads, 5);
        report::<f32>("768x768x768", "f32", square, threads, 5);
        report::<f64>("50257x768x768", "f64", vocab, threads, 2);
        report::<f32>("50257x768x768", "f32", vocab, threads, 2);
    }
}
