//! Print what a fuzz input decodes to: `cargo run --release --example show -- TARGET FILE`.
//! For the planners, add `run` to also build the image and time it.

use arbitrary::Unstructured;
use disksynth_fuzz::{gen, http, planners};

/// Debug output, cut short (names in the options can be kilobytes long).
fn clip(s: String) -> String {
    if s.len() <= 2000 {
        return s;
    }
    let mut end = 2000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn tree_summary(t: &tree::Tree) -> String {
    fn depth(n: &tree::Node) -> usize {
        1 + n.children().iter().map(depth).max().unwrap_or(0)
    }
    format!("{:?}, depth {}", t.stats, depth(&t.root))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file, rest @ ..] = &args[..] else {
        eprintln!("usage: show TARGET FILE [run]");
        std::process::exit(2);
    };
    let data = std::fs::read(file).expect("the input file");
    let run = rest.first().is_some_and(|a| a == "run");
    let mut u = Unstructured::new(&data);
    let shape = |links, xattrs| gen::Shape {
        links_and_specials: links,
        xattrs,
        max_nodes: planners::MAX_NODES,
        max_depth: planners::MAX_DEPTH,
    };
    match target.as_str() {
        "fat_plan" => {
            let opts = planners::fat_options(&mut u);
            println!("{}", clip(format!("{opts:#?}")));
            let t = gen::tree(&mut u, shape(false, false)).unwrap();
            println!("{}", tree_summary(&t));
            if rest.iter().any(|a| a == "tree") {
                println!("{}", clip(format!("{t:#?}")));
            }
        }
        "iso_plan" => {
            let t = gen::tree(&mut u, shape(true, false)).unwrap();
            println!("{}", tree_summary(&t));
            let opts = planners::iso_options(&mut u, &t);
            println!("{}", clip(format!("{opts:#?}")));
            if rest.iter().any(|a| a == "tree") {
                println!("{}", clip(format!("{t:#?}")));
            }
        }
        "ext4_plan" => {
            let opts = planners::ext4_options(&mut u);
            println!("{}", clip(format!("{opts:#?}")));
            let t = gen::tree(&mut u, shape(true, true)).unwrap();
            println!("{}", tree_summary(&t));
            if rest.iter().any(|a| a == "tree") {
                println!("{}", clip(format!("{t:#?}")));
            }
        }
        "http_content_range" => println!("{:#?}", http::Script::parse(&data)),
        other => println!("nothing to show for {other}"),
    }
    if run {
        let t0 = std::time::Instant::now();
        match target.as_str() {
            "fat_plan" => planners::fat(&data),
            "iso_plan" => planners::iso(&data),
            "ext4_plan" => planners::ext4(&data),
            "xz_index" => disksynth_fuzz::xz::run(&data),
            "qcow2" => disksynth_fuzz::qcow2::run(&data),
            "http_content_range" => http::session(&data).iter().for_each(|l| println!("{l}")),
            "nbd_handshake_and_requests" => {
                let out = disksynth_fuzz::nbd::session(&data);
                println!("server sent {} bytes", out.len());
            }
            _ => {}
        }
        println!("ran in {:?}", t0.elapsed());
    }
}
