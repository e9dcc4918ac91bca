//! `gdiff`: the command line of guided diffusion (filled in by the command-line issue).
fn main() {
    println!("gdiff {}", env!("CARGO_PKG_VERSION"));
}
