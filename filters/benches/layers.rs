//! What a pass-through layer costs a request, in-process (no sockets, no
//! scheduler noise): 4 KiB `read_at` and `read_chunks` calls on an
//! in-memory disk, directly and through 5 `nofilter` layers, alternating,
//! median of 9 rounds. `cargo bench -p disksynth-filters --bench layers`.
//! bench/filters.py measures the same stack end to end over NBD.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use synth::{BlockDev, RegionMapBuilder};

const DISK: u64 = 64 << 20;
const IO: usize = 4096;
const CALLS: u64 = 200_000;

fn time_reads(dev: &dyn BlockDev, chunks: bool) -> f64 {
    let mut buf = vec![0u8; IO];
    let mut out = Vec::new();
    let t = Instant::now();
    for i in 0..CALLS {
        let off = (i * IO as u64) % DISK;
        if chunks {
            out.clear();
            dev.read_chunks(off, IO as u64, &mut out).unwrap();
            black_box(&out);
        } else {
            dev.read_at(&mut buf, off).unwrap();
            black_box(&buf);
        }
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut b = RegionMapBuilder::new();
    b.push_bytes(
        "data",
        (0..DISK).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    let dev: Arc<dyn BlockDev> = Arc::new(b.finish());
    let texts: Vec<String> = (0..5).map(|_| "nofilter".to_string()).collect();
    let export =
        filters::stack(&texts, filters::Base::Shared(dev.clone(), "bench".into())).unwrap();
    let layered = synth::Export::open(&*export).unwrap();
    for (what, chunks) in [("read_at 4 KiB", false), ("read_chunks 4 KiB", true)] {
        let (mut plain, mut five) = (Vec::new(), Vec::new());
        for round in 0..9 {
            if round % 2 == 0 {
                plain.push(time_reads(&*dev, chunks));
                five.push(time_reads(&*layered, chunks));
            } else {
                five.push(time_reads(&*layered, chunks));
                plain.push(time_reads(&*dev, chunks));
            }
        }
        let (p, f) = (median(plain), median(five));
        println!(
            "{what}: direct {p:.1} ns, through 5 nofilter layers {f:.1} ns: {:+.1} ns per call, \
             {:.2} ns per layer",
            f - p,
            (f - p) / 5.0
        );
    }
}
