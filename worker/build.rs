//! With the `libtorch` feature, writes libtorch's folder (found by incept-common's build script)
//! into the worker's rpath, so it runs without `LD_LIBRARY_PATH`.

fn main() {
    if let Ok(folder) = std::env::var("DEP_INCEPT_COMMON_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{folder}");
    }
}
