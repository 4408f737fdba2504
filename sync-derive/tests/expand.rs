//! Well-formed models compile, and the derive accepts every supported shape.

#[test]
fn well_formed_models_compile() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/pass/*.rs");
}
