from collections.abc import Iterable, Mapping, Sequence


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


def compare_shapes(found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]],
                   ignore: Iterable[str] = (), found_label: str = "checkpoint", expected_label: str = "config"
                   ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mismatched) keys of a checkpoint's tensor shapes against a model's, for ``key_report``.

    Keys ending with one of ``ignore`` are left out on both sides; a mismatch reads
    ``'<key>: checkpoint (48, 48) vs config (32, 32)'`` (the labels say whose shape is whose).
    """
    ignore = tuple(ignore)

    def kept(keys):
        return [k for k in keys if not (ignore and k.endswith(ignore))]

    missing = kept(k for k in expected if k not in found)
    unexpected = kept(k for k in found if k not in expected)
    mismatched = [f"{k}: {found_label} {tuple(found[k])} vs {expected_label} {tuple(expected[k])}"
                  for k in kept(expected) if k in found and tuple(found[k]) != tuple(expected[k])]
    return missing, unexpected, mismatched
