//! piha-agent (placeholder until implemented).

fn main() {
    println!("piha-agent {}", env!("CARGO_PKG_VERSION"));
}
