//! Progress of long jobs, reported upward: library code calls a [`ProgressFn`] with
//! [`Progress`] events and never draws anything; the command line turns them into bars.

/// What a long job reports while it runs, in units of its choosing (epochs, fits, runs).
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// This many more units are queued.
    Queued(u64),
    /// This many units are done.
    Done(u64),
    /// One unit is done: the run with this label (e.g. `mat/draw03_seed0`).
    Finished(&'a str),
}

/// A progress callback; jobs may call it from several threads.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress<'_>) + Sync);
