"Shared pytest set-up: hypothesis never fails a test for being slow (CI machines are shared and their speed varies)"
from hypothesis import HealthCheck, settings

settings.register_profile('fastprune', deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('fastprune')
