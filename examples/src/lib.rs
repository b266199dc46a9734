//! Examples of embedding sbx: see the files next to this crate (`cargo run -p sbx-examples --example NAME`).
