//! Every misuse of `#[derive(Syncable)]` is a compile error that points at
//! the offending token and says how to fix it. `TRYBUILD=overwrite cargo test
//! -p sync-derive --test ui` regenerates the `.stderr` snapshots after a
//! deliberate change to a message; read each one as a user would.

#[test]
fn misuse_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*/*.rs");
}
