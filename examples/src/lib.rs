//! Examples of embedding sandkit: see the files next to this crate (`cargo run -p sandkit-examples --example NAME`).
