//! ferroloop is built as an extension module, which leaves the interpreter's symbols to
//! the process that loads it. The fuzz targets never call into Python, but the write
//! queue's code names a few of its functions (for the chunks that share a `bytes`), so
//! the targets link the interpreter's shared library ($PYTHON, default python3).

use std::process::Command;

fn main() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    println!("cargo:rerun-if-env-changed=PYTHON");
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig as s; print(s.get_config_var('LIBDIR')); print(s.get_config_var('LDVERSION'))",
        ])
        .output()
        .expect("running the interpreter ($PYTHON) to find its library");
    let text = String::from_utf8(out.stdout).expect("the interpreter's answer");
    let mut lines = text.lines();
    let (libdir, version) = (lines.next().expect("LIBDIR"), lines.next().expect("LDVERSION"));
    println!("cargo:rustc-link-search=native={libdir}");
    println!("cargo:rustc-link-lib=dylib=python{version}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
}
