use std::io;
use std::process::ExitCode;

use tuning::apply::Privilege;
use tuning::{run, Environment};

/// Used when sysconf cannot say; every Linux architecture the gateway targets starts at 4 KiB.
const FALLBACK_PAGE_SIZE: u64 = 4096;

fn main() -> ExitCode {
    // SAFETY: geteuid and sysconf only read process state; neither touches memory we own.
    let (euid, page_size) = unsafe { (libc::geteuid(), libc::sysconf(libc::_SC_PAGESIZE)) };
    let environment = Environment {
        privilege: if euid == 0 {
            Privilege::Root
        } else {
            Privilege::Unprivileged
        },
        page_size: u64::try_from(page_size)
            .ok()
            .filter(|&size| size > 0)
            .unwrap_or(FALLBACK_PAGE_SIZE),
    };
    let exit = run(
        std::env::args_os().skip(1),
        environment,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    ExitCode::from(exit as u8)
}
