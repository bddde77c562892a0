//! `ringkv-cli`: the command-line client. All logic lives in
//! [`ringkv::cli`]; see its module doc.

fn main() -> std::process::ExitCode {
    ringkv::cli::main()
}
