class RewardLoadError(RuntimeError):
    """A reward's files are missing, incomplete or not what they should be. The message says what to do."""


class RewardFilesMissing(RewardLoadError):
    """Some of a reward's files are not in any ``reno_rewards`` folder."""


def key_report(missing=(), unexpected=(), mismatched=(), shown: int = 8) -> str:
    """'2 missing key(s): a, b; 1 unexpected key(s): c' (the first ``shown`` of each), '' when all match."""
    parts = []
    for label, keys in (("missing", list(missing)), ("unexpected", list(unexpected)), ("mismatched", list(mismatched))):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {label} key(s): " + ", ".join(map(str, keys[:shown])) + more)
    return "; ".join(parts)
