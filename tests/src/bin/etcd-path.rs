//! Prints the etcd binary the harness would use (for `make demo` and `make bench`).
fn main() {
    println!("{}", pipeline_tests::etcd::etcd_binary().display());
}
