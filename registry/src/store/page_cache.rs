//! SQLite's own page cache, with one cost taken out of every commit that rebalances a B-tree.
//!
//! When SQLite splits or merges B-tree pages it sorts the new siblings by page number, swapping
//! two pages through a temporary number: the page after the one holding the "pending byte"
//! (page 262,145 at 4 KiB pages). The default page cache (`pcache1`) then remembers that number
//! as the highest key it holds, and at the end of the transaction it truncates the cache to the
//! database's size by scanning its *whole* hash table, one slot per cached page. With the
//! writer's 256 MiB cache that scan ran at nearly every commit and was the largest single cost
//! of a commit (`pcache1TruncateUnsafe`: 30% of the writer thread under load, and it grows with
//! the registry).
//!
//! This wrapper forwards everything to `pcache1` but the first step of that swap: a page moved
//! to the temporary number stays under its own key inside `pcache1` while this layer answers for
//! it, and the swap's last step moves it straight to its final number. Any other call made while
//! a page is parked first completes the move for real, so every call sees what `pcache1` alone
//! would show. It is installed once per process, before SQLite initialises
//! ([`install`]); if SQLite is already initialised, the default cache stays.

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

use rusqlite::ffi;

/// The default methods, which the wrapper forwards to.
struct Default(ffi::sqlite3_pcache_methods2);

// SAFETY: the methods are C function pointers and SQLite's own `pArg`, which SQLite shares
// across threads itself.
unsafe impl Send for Default {}
unsafe impl Sync for Default {}

static DEFAULT: OnceLock<Default> = OnceLock::new();
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Swaps whose temporary move never reached `pcache1`.
static SWAPS: AtomicU64 = AtomicU64::new(0);

/// Installs the wrapper as SQLite's page cache for this process, once. Returns whether it is
/// in use: `false` if SQLite was initialised before (then nothing changes).
pub(super) fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: `sqlite3_config` before initialisation, with the argument type each option
        // takes; it fails (and changes nothing) once SQLite is initialised.
        unsafe {
            let mut default: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
            if ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut default as *mut ffi::sqlite3_pcache_methods2,
            ) != ffi::SQLITE_OK
                || default.xCreate.is_none()
            {
                tracing::debug!("SQLite is already initialised; keeping its page cache");
                return;
            }
            let _ = DEFAULT.set(Default(default));
            let wrapper = ffi::sqlite3_pcache_methods2 {
                iVersion: 1,
                pArg: default.pArg,
                xInit: default.xInit,
                xShutdown: default.xShutdown,
                xCreate: Some(create),
                xCachesize: Some(cachesize),
                xPagecount: Some(pagecount),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            // SQLite copies the methods.
            if ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &wrapper as *const ffi::sqlite3_pcache_methods2,
            ) != ffi::SQLITE_OK
            {
                tracing::debug!("SQLite refused the page cache; keeping its own");
            } else {
                INSTALLED.store(true, Ordering::SeqCst);
            }
        }
    });
    installed()
}

/// Whether the wrapper is SQLite's page cache in this process.
pub(super) fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Page swaps of B-tree rebalancing the wrapper kept from `pcache1`, in this process.
pub(super) fn swaps() -> u64 {
    SWAPS.load(Ordering::Relaxed)
}

/// The default methods (always set: the wrapper is installed after them).
fn default() -> Option<&'static ffi::sqlite3_pcache_methods2> {
    DEFAULT.get().map(|d| &d.0)
}

/// One cache: `pcache1`'s, and the page parked at the temporary number, if any.
struct Wrapped {
    inner: *mut ffi::sqlite3_pcache,
    /// The temporary number of the swap: the page after the pending byte's.
    temp_key: c_uint,
    /// A page SQLite moved to `temp_key`, still under its own key inside `pcache1`.
    parked: Option<Parked>,
}

#[derive(Clone, Copy)]
struct Parked {
    page: *mut ffi::sqlite3_pcache_page,
    own_key: c_uint,
    /// Another page has since moved to `own_key` (the swap's middle step).
    taken: bool,
}

/// The pending byte's offset (SQLite's `PENDING_BYTE`, which only its test builds change).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// # Safety
/// `cache` must be a pointer [`create`] returned and [`destroy`] has not freed. SQLite calls a
/// cache's methods from one connection at a time, so the `&mut` is unique.
unsafe fn wrapped<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a mut Wrapped {
    unsafe { &mut *(cache as *mut Wrapped) }
}

impl Wrapped {
    /// Completes a parked move in `pcache1`, so that it holds exactly what SQLite believes.
    unsafe fn unpark(&mut self) {
        if let Some(parked) = self.parked.take()
            && let Some(rekey) = default().and_then(|d| d.xRekey)
        {
            unsafe { rekey(self.inner, parked.page, parked.own_key, self.temp_key) };
        }
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(create) = default().and_then(|d| d.xCreate) else {
        return std::ptr::null_mut();
    };
    let inner = unsafe { create(page_size, extra, purgeable) };
    if inner.is_null() {
        return inner;
    }
    let temp_key = PENDING_BYTE / c_uint::try_from(page_size.max(1)).unwrap_or(1) + 1;
    Box::into_raw(Box::new(Wrapped {
        inner,
        temp_key,
        parked: None,
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(cache: *mut ffi::sqlite3_pcache, pages: c_int) {
    let cache = unsafe { wrapped(cache) };
    unsafe { cache.unpark() };
    if let Some(f) = default().and_then(|d| d.xCachesize) {
        unsafe { f(cache.inner, pages) }
    }
}

unsafe extern "C" fn pagecount(cache: *mut ffi::sqlite3_pcache) -> c_int {
    let cache = unsafe { wrapped(cache) };
    match default().and_then(|d| d.xPagecount) {
        Some(f) => unsafe { f(cache.inner) },
        None => 0,
    }
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = unsafe { wrapped(cache) };
    if let Some(parked) = cache.parked {
        if key == cache.temp_key {
            return parked.page;
        }
        if key == parked.own_key && !parked.taken {
            // The parked page is no longer at its own number: nothing is, unless SQLite wants
            // a page there, which needs the move done for real first.
            if create == 0 {
                return std::ptr::null_mut();
            }
            unsafe { cache.unpark() };
        }
    }
    match default().and_then(|d| d.xFetch) {
        Some(f) => unsafe { f(cache.inner, key, create) },
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn unpin(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    let cache = unsafe { wrapped(cache) };
    unsafe { cache.unpark() };
    if let Some(f) = default().and_then(|d| d.xUnpin) {
        unsafe { f(cache.inner, page, discard) }
    }
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let cache = unsafe { wrapped(cache) };
    let Some(f) = default().and_then(|d| d.xRekey) else {
        return;
    };
    if let Some(parked) = cache.parked {
        if page == parked.page && old == cache.temp_key {
            // The swap's last step: straight from its own number to its final one.
            cache.parked = None;
            unsafe { f(cache.inner, page, parked.own_key, new) };
            SWAPS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if page != parked.page && new == parked.own_key && !parked.taken {
            // The swap's middle step: the other page takes the parked one's number. `pcache1`
            // holds both under it until the last step, and finds this one first (it files a
            // moved page at the head of its slot), as it would find it alone.
            unsafe { f(cache.inner, page, old, new) };
            cache.parked = Some(Parked {
                taken: true,
                ..parked
            });
            return;
        }
        unsafe { cache.unpark() };
    }
    if new == cache.temp_key {
        cache.parked = Some(Parked {
            page,
            own_key: old,
            taken: false,
        });
        return;
    }
    unsafe { f(cache.inner, page, old, new) }
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = unsafe { wrapped(cache) };
    unsafe { cache.unpark() };
    if let Some(f) = default().and_then(|d| d.xTruncate) {
        unsafe { f(cache.inner, limit) }
    }
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    let mut cache = unsafe { Box::from_raw(cache as *mut Wrapped) };
    unsafe { cache.unpark() };
    if let Some(f) = default().and_then(|d| d.xDestroy) {
        unsafe { f(cache.inner) }
    }
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    let cache = unsafe { wrapped(cache) };
    unsafe { cache.unpark() };
    if let Some(f) = default().and_then(|d| d.xShrink) {
        unsafe { f(cache.inner) }
    }
}
