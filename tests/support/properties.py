"""Hypothesis settings for the property tests: quick by default, HYPOTHESIS_PROFILE=fuzz for more.

The tests take ``property_settings``; nothing here changes Hypothesis's
global default, so other Hypothesis tests in the same run keep theirs.
"""

import os

from hypothesis import settings

# No deadline: an example's time varies with what it generates, and with the event loop.
settings.register_profile("quick", max_examples=50, stateful_step_count=25, deadline=None)
settings.register_profile("fuzz", max_examples=2_000, stateful_step_count=50, deadline=None)

property_settings = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
