//! What counting costs per request: THREADS threads reading 4 KiB requests
//! through the view's layer over a one-region device, against the same
//! without the layer. `cargo run --release -p disksynth-web-view --example cost`
use std::sync::Arc;
use std::time::Instant;

use synth::{Backing, BlockDev, Client, LayerFactory, Peer, RegionMapBuilder};
use web_view::collect::{Collector, WatchFactory};
use web_view::map::DiskMap;

fn run(dev: &Arc<dyn BlockDev>, threads: usize, n: u64) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            let dev = dev.clone();
            s.spawn(move || {
                let mut out = Vec::new();
                for i in 0..n {
                    out.clear();
                    let off = ((i * threads as u64 + k as u64) % (1 << 18)) * 4096;
                    let _ = dev.read_chunks(off, 4096, &mut out);
                }
            });
        }
    });
    t.elapsed().as_nanos() as f64 / (n * threads as u64) as f64
}

fn main() {
    let mut b = RegionMapBuilder::new();
    b.push("data", 1 << 30, Backing::Bytes(vec![7u8; 1 << 30].into()))
        .unwrap();
    let base: Arc<dyn BlockDev> = Arc::new(b.finish());
    let collector = Arc::new(Collector::new("", DiskMap::of(&*base)));
    let f = WatchFactory { collector };
    let client = Client {
        id: 1,
        peer: Peer::Other,
        export: String::new(),
    };
    let watched = f.layer(base.clone(), &client).unwrap();
    for threads in [1, 2, 4] {
        let n = 2_000_000 / threads as u64;
        let plain = run(&base, threads, n);
        let web = run(&watched, threads, n);
        println!(
            "{threads} threads: plain {plain:.0} ns/req, watched {web:.0} ns/req, +{:.0} ns",
            web - plain
        );
    }
}
