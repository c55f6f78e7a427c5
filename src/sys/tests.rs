//! `Mapping::map` checks what it relies on: a memfd sealed against shrinking, at least as
//! long as the mapping (so no access to the mapping can ever raise SIGBUS).

use super::*;

fn memfd(name: &str, len: i64) -> OwnedFd {
    let name = std::ffi::CString::new(name).unwrap();
    let fd = memfd_create(
        name.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    nix::unistd::ftruncate(&fd, len).unwrap();
    fd
}

#[test]
fn map_refuses_an_unsealed_memfd() {
    let fd = memfd("unsealed", 4096);
    let e = Mapping::map(fd.as_fd(), 4096, false).expect_err("an unsealed memfd was mapped");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(
        e.to_string().contains("not sealed against shrinking"),
        "{e}"
    );
    // Sealed against growing only: still refused (shrinking is what would fault).
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).unwrap();
    assert!(Mapping::map(fd.as_fd(), 4096, true).is_err());
    // Once sealed against shrinking, the same fd maps.
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
    let m = Mapping::map(fd.as_fd(), 4096, true).unwrap();
    assert_eq!(m.len(), 4096);
}

#[test]
fn map_refuses_a_memfd_shorter_than_the_mapping() {
    let fd = memfd_sealed(c"short", 4096).unwrap();
    let e = Mapping::map(fd.as_fd(), 8192, false).expect_err("a 4 KiB memfd mapped as 8 KiB");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("fewer than the 8192"), "{e}");
    assert!(Mapping::map(fd.as_fd(), 4096, false).is_ok());
    assert!(
        Mapping::map(fd.as_fd(), 100, false).is_ok(),
        "a prefix is fine"
    );
    assert!(Mapping::map(fd.as_fd(), 0, false).is_err(), "empty mapping");
}

#[test]
fn map_refuses_what_is_not_a_memfd() {
    let dir = std::env::temp_dir().join(format!("shmbus-sys-map-{}", std::process::id()));
    let f = std::fs::File::create(&dir).unwrap();
    f.set_len(4096).unwrap();
    let e = Mapping::map(f.as_fd(), 4096, false).expect_err("a plain file was mapped");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    drop(f);
    let _ = std::fs::remove_file(&dir);
}
