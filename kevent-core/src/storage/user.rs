//! USER: events triggered by the program itself (`note::TRIGGER`), with
//! the flag arithmetic of `note::FFAND/FFOR/FFCOPY`.
//!
//! FreeBSD semantics: the knote is active once triggered; without `CLEAR`
//! it stays active (and is returned by every call) until deleted or a
//! change with `CLEAR` resets it. Delivered `fflags` are the knote's flag
//! word (the low 24 bits), `data` the `data` of the last change. Every
//! change to the knote replaces `udata`, as on FreeBSD.
//!
//! **`ADD` with `TRIGGER` fires at once** — as on macOS (XNU's
//! `filt_userattach` tests `kn_sfflags`), OpenBSD, DragonFly and libkqueue,
//! and as FreeBSD's code intends, but not as FreeBSD behaves:
//! FreeBSD's `filt_userattach` (`sys/kern/kern_event.c`, 14.x) sets
//! `kn_hookid` from `kn_fflags & NOTE_TRIGGER`, and `kqueue_register` has
//! zeroed `kev->fflags` before copying the change into `kn_kevent` (the
//! requested fflags live in `kn_sfflags`), so the `f_event` call that
//! follows the attach sees `kn_hookid` = 0 and a FreeBSD knote created
//! with `TRIGGER` stays untriggered until a later `TRIGGER`. We follow the
//! evident intent and every other implementation here; a program written
//! for FreeBSD that adds and triggers in two changes behaves the same on
//! both.

use super::{Context, Errno, Storage};
use crate::event::{note, Filter, Flags, Kevent};
use crate::knote::KnoteId;

/// The USER storage (stateless: the trigger state is the knote's `hook`).
#[derive(Debug, Default)]
pub(crate) struct UserStorage;

fn apply_ffctrl(old: u32, fflags: u32) -> u32 {
    let v = fflags & note::FFLAGSMASK;
    match fflags & note::FFCTRLMASK {
        note::FFAND => old & v,
        note::FFOR => old | v,
        note::FFCOPY => v,
        _ => old,
    }
}

impl Storage for UserStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::User]
    }

    fn attach(&mut self, cx: &mut Context<'_>, id: KnoteId) -> Result<(), Errno> {
        let k = cx.knote_mut(id);
        let f = k.sfflags();
        // The ADD's fflags become the flag word whatever the control bits
        // say, as on FreeBSD. FreeBSD stores them raw (`kn_sfflags =
        // kev->fflags`), control and TRIGGER bits included, and reports
        // them back; we keep the low 24 bits only (as DragonFly does), so
        // a delivered flag word never carries control bits.
        k.set_sfflags(f & note::FFLAGSMASK);
        if f & note::TRIGGER != 0 {
            k.hook = 1;
            cx.activate(id);
        }
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, id: KnoteId, ch: &Kevent) -> Result<(), Errno> {
        let k = cx.knote_mut(id);
        let trigger = ch.fflags & note::TRIGGER != 0;
        if trigger {
            k.hook = 1;
        }
        let nf = apply_ffctrl(k.sfflags(), ch.fflags);
        k.set_sfflags(nf);
        k.sdata = ch.data;
        if ch.flags.contains(Flags::CLEAR) {
            k.hook = 0;
            k.set_data(0);
            k.set_fflags(0);
            cx.deactivate(id);
        } else if trigger {
            cx.activate(id);
        }
        Ok(())
    }

    fn detach(&mut self, _cx: &mut Context<'_>, _id: KnoteId) {}

    fn event(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        let k = cx.knote(id);
        *out = k.to_event();
        out.fflags = k.sfflags();
        out.data = k.sdata();
        k.hook != 0
    }

    fn clear(&mut self, cx: &mut Context<'_>, id: KnoteId) {
        cx.knote_mut(id).hook = 0;
    }
}
