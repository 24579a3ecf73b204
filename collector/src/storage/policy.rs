//! The maintainer's decisions, as plain functions of what it saw (the marks are
//! `telemetry::storage`'s; docs/storage.md draws them).

use telemetry::storage::{EXPIRE_TO, FILE_LIMIT};

use super::members::MemberStatus;

/// Whether a member is worth defragmenting now. Defragmentation blocks the member while it
/// runs, so: urgently when its alarm is raised or its file is at 90% of the quota, provided it
/// frees a twentieth of the file; otherwise when a quarter of a file of at least half the budget
/// is free, and the member has `rested` since its last defragmentation.
pub(super) fn worth_defragmenting(
    m: &MemberStatus,
    alarmed: bool,
    rested: bool,
    quota: i64,
    budget: i64,
) -> bool {
    let (file, free) = (m.db_size as f64, (m.db_size - m.in_use) as f64);
    let urgent = (alarmed || file >= 0.9 * quota as f64) && free >= 0.05 * file;
    let worth = free >= 0.25 * file && file >= 0.5 * budget as f64;
    urgent || worth && rested
}

/// Whether the NOSPACE alarm may be disarmed: every member's file leaves room under the quota
/// for the collectors to commit what is queued (not the budget: commits free the queue).
pub(super) fn may_disarm(members: &[MemberStatus], quota: i64) -> bool {
    members
        .iter()
        .all(|m| (m.db_size as f64) < FILE_LIMIT * quota as f64)
}

/// The share of the stored time span to expire: as large as the share of the space to free
/// to get back to [`EXPIRE_TO`], between 2% (progress) and half (never all at once).
pub(super) fn expiry_share(in_use: i64, budget: i64) -> f64 {
    let target = EXPIRE_TO * budget as f64;
    ((in_use as f64 - target) / in_use.max(1) as f64).clamp(0.02, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1024 * 1024;

    fn member(db_size: i64, in_use: i64) -> MemberStatus {
        MemberStatus {
            id: 1,
            name: "m0".into(),
            db_size,
            in_use,
            reported_quota: 0,
            revision: 1,
        }
    }

    #[test]
    fn defragments_when_it_frees_enough_and_not_too_often() {
        let (quota, budget) = (100 * MIB, 80 * MIB);
        // A raised alarm with nothing to free: a blocked member for nothing.
        assert!(!worth_defragmenting(
            &member(99 * MIB, 98 * MIB),
            true,
            true,
            quota,
            budget
        ));
        assert!(worth_defragmenting(
            &member(99 * MIB, 60 * MIB),
            true,
            false,
            quota,
            budget
        ));
        // A file near the quota is urgent even without the alarm, and even unrested.
        assert!(worth_defragmenting(
            &member(91 * MIB, 80 * MIB),
            false,
            false,
            quota,
            budget
        ));
        // A quarter free of a file of half the budget: when rested.
        assert!(worth_defragmenting(
            &member(50 * MIB, 30 * MIB),
            false,
            true,
            quota,
            budget
        ));
        assert!(!worth_defragmenting(
            &member(50 * MIB, 30 * MIB),
            false,
            false,
            quota,
            budget
        ));
        // Small files are not worth blocking a member.
        assert!(!worth_defragmenting(
            &member(10 * MIB, MIB),
            false,
            true,
            quota,
            budget
        ));
    }

    #[test]
    fn disarms_only_with_room_under_the_quota_on_every_member() {
        let quota = 100 * MIB;
        assert!(may_disarm(&[member(90 * MIB, 90 * MIB)], quota));
        assert!(!may_disarm(
            &[member(90 * MIB, 9 * MIB), member(96 * MIB, 9 * MIB)],
            quota
        ));
    }

    #[test]
    fn expires_a_share_of_the_span_like_the_share_of_space_to_free() {
        let budget = 100 * MIB;
        assert!((expiry_share(100 * MIB, budget) - 0.2).abs() < 1e-9);
        assert_eq!(expiry_share(81 * MIB, budget), 0.02);
        assert_eq!(expiry_share(1000 * MIB, budget), 0.5);
    }
}
