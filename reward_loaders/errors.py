class RewardLoadError(RuntimeError):
    """A reward's files are missing, incomplete or not what they should be. The message says what to do."""


class RewardFilesMissing(RewardLoadError):
    """Some of a reward's files are not in any ``reno_rewards`` folder."""
