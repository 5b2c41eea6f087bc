//! The dependency direction of the crates' modules: no module uses an item of a module that uses
//! it back, directly or through others (tests/tools/module_rings.py resolves every `use` to the
//! module defining the item). Keeps `api -> batch -> engine -> kernels` and the modules inside
//! each layer pointing one way.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/tools/module_rings.py"))
        .arg(root.join("src"))
        .arg(root.join("kernels/src"))
        .output()
        .expect("python3 runs (make test needs it for the model weights too)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import rings:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 rings among"), "{text}");
}
