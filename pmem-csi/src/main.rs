//! `pmem-csi`: a CSI driver for persistent memory (work in progress).

fn main() {
    eprintln!("pmem-csi: not implemented yet");
    std::process::exit(2);
}
