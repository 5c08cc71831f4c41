"Property and error tests for `fastprune.schedules`"
import math, pickle
import numpy as np, pytest, torch
from hypothesis import given, settings, assume, strategies as st
from fastprune.schedules import *

# start in [0, 1), end in (start, 1]
@st.composite
def start_end(draw):
    start = draw(st.floats(0., 0.99, exclude_max=True))
    end = draw(st.floats(0., 1.).filter(lambda e: e > start))
    return start, end

@st.composite
def schedules(draw):
    start, end = draw(start_end())
    kind = draw(st.sampled_from(['one_shot', 'iterative', 'agp', 'linear', 'cosine', 'user']))
    if kind == 'one_shot': return one_shot(start)
    if kind == 'iterative': return iterative(draw(st.integers(1, 20)), start, end)
    if kind == 'user': return as_schedule(lambda p: p**3)
    return globals()[kind](start, end)

probs = st.floats(0., 1.)

@settings(max_examples=300)
@given(schedules(), st.lists(probs, min_size=2, max_size=50))
def test_monotone_in_unit_interval(s, ps):
    vals = [s(p) for p in sorted(ps)]
    assert all(0. <= v <= 1. for v in vals)
    assert all(a <= b for a,b in zip(vals, vals[1:])), (s, sorted(ps), vals)

@settings(max_examples=300)
@given(schedules(), probs)
def test_zero_before_start_one_from_end(s, u):
    if s.start > 0: assert s(min(u*s.start, math.nextafter(s.start, -1))) == 0.
    assert s(s.end + u*(1-s.end)) == 1.
    assert s(1.) == 1. and s(s.end) == 1.
    assert type(s(u)) is float

@settings(max_examples=200)
@given(start_end(), probs)
def test_smooth_schedules_start_at_zero_and_are_continuous(se, u):
    start, end = se
    for f in (agp, linear, cosine):
        s = f(start, end)
        assert s(start) == 0.
        p = start + u*(end-start)
        assume(p < end)
        # continuous: a small step moves the value a little (all slopes are at most 3/(end-start))
        h = 1e-9
        assert abs(s(min(p+h, 1.)) - s(p)) <= 4*h/(end-start) + 1e-12

@settings(max_examples=300)
@given(start_end(), probs, st.floats(0., 1.), st.floats(0., 1.))
def test_agp_is_published_formula(se, u, a, b):
    start, end = se
    s_i, s_f = min(a, b), max(a, b)
    p = start + u*(end - start)
    t = min(max((p - start)/(end - start), 0.), 1.)
    expected = s_f + (s_i - s_f)*(1 - t)**3   # Zhu & Gupta 2017, t0=start, n*dt=end-start
    assert math.isclose(sparsity_at(agp(start, end), p, s_f, initial=s_i), expected, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(agp(start, end)(p), 1 - (1 - t)**3, rel_tol=1e-9, abs_tol=1e-12)

def test_agp_values():
    s = agp(0.2, 0.6)
    assert s(0.2) == 0. and s(0.6) == 1.
    assert math.isclose(s(0.4), 0.875)
    assert math.isclose(sparsity_at(s, 0.4, 0.8), 0.7)

def test_linear_cosine_values():
    assert math.isclose(linear(0.2, 0.6)(0.3), 0.25)
    assert math.isclose(cosine(0.2, 0.6)(0.4), 0.5)
    assert math.isclose(cosine()(0.25), (1 - math.cos(math.pi/4))/2)

@settings(max_examples=100)
@given(st.integers(1, 30), start_end())
def test_iterative_steps(steps, se):
    start, end = se
    s = iterative(steps, start, end)
    jumps = [start + (k-1)*(end-start)/steps for k in range(1, steps+1)]
    assert s.jumps == jumps
    grid = sorted(set(np.linspace(0, 1, 501).tolist() + jumps + [math.nextafter(j, -1) for j in jumps]))
    vals = [s(p) for p in grid]
    pos = sorted(set(v for v in vals if v > 0))
    assert len(pos) == steps                      # exactly `steps` distinct positive values
    assert all(math.isclose(v, k/steps) for k,v in enumerate(pos, 1))
    for k,j in enumerate(jumps, 1):                # the k-th jump happens exactly at jumps[k-1]
        assert math.isclose(s(j), k/steps)
        assert math.isclose(s(math.nextafter(j, -1)), (k-1)/steps)
    assert s(jumps[-1]) == 1.                      # last jump reaches 1, before `end`

def test_iterative_one_step_is_one_shot():
    a, b = iterative(1, 0.3, 0.9), one_shot(0.3)
    for p in np.linspace(0, 1, 101): assert a(p) == b(p)

def test_one_shot():
    s = one_shot(0.25)
    assert (s.start, s.end) == (0.25, 0.25)
    assert s(math.nextafter(0.25, 0)) == 0. and s(0.25) == 1.
    assert one_shot()(0.) == 1.

def test_repr():
    assert repr(agp(start=0.1, end=0.8)) == 'agp(start=0.1, end=0.8)'
    assert repr(iterative()) == 'iterative(steps=3, start=0.0, end=1.0)'
    assert repr(one_shot(0.5)) == 'one_shot(at=0.5)'
    assert repr(linear(0.1, 0.5)) == 'linear(start=0.1, end=0.5)'
    assert repr(cosine()) == 'cosine(start=0.0, end=1.0)'
    def quad(p): return p*p
    assert repr(as_schedule(quad)) == 'as_schedule(quad)'

def test_pure_and_picklable():
    for s in (one_shot(0.3), iterative(4, 0.1, 0.9), agp(0.1, 0.8), linear(), cosine(0.2, 1.)):
        ps = np.random.default_rng(0).random(50)
        first = [s(p) for p in ps]
        assert [s(p) for p in ps] == first            # no hidden state
        s2 = pickle.loads(pickle.dumps(s))             # callbacks holding schedules can be exported
        assert [s2(p) for p in ps] == first and repr(s2) == repr(s)

def test_accepts_numpy_and_tensor_positions():
    s = agp(0., 1.)
    assert s(np.float32(0.5)) == s(0.5) == s(torch.tensor(0.5)) == s(np.array(0.5))
    assert s(-0.5) == 0. and s(1.5) == 1.

@pytest.mark.parametrize('f,msg', [
    (lambda: agp(start=1.), '`start` must be in [0, 1), got 1.0'),
    (lambda: agp(start=-0.1), '`start` must be in [0, 1), got -0.1'),
    (lambda: agp(start=float('nan')), '`start` must be in [0, 1), got nan'),
    (lambda: linear(end=0.), '`end` must be in (0, 1], got 0.0'),
    (lambda: cosine(end=1.2), '`end` must be in (0, 1], got 1.2'),
    (lambda: agp(end=float('nan')), '`end` must be in (0, 1], got nan'),
    (lambda: agp(0.5, 0.5), '`end` must be greater than `start`, got start=0.5, end=0.5'),
    (lambda: linear(0.6, 0.4), '`end` must be greater than `start`, got start=0.6, end=0.4'),
    (lambda: iterative(3, 0.6, 0.4), '`end` must be greater than `start`'),
    (lambda: iterative(0), '`steps` must be an int >= 1, got 0'),
    (lambda: iterative(-2), '`steps` must be an int >= 1, got -2'),
    (lambda: iterative(2.5), '`steps` must be an int >= 1, got 2.5'),
    (lambda: iterative(3.0), '`steps` must be an int >= 1, got 3.0'),
    (lambda: iterative(True), '`steps` must be an int >= 1, got True'),
    (lambda: one_shot(1.), '`at` must be in [0, 1), got 1.0'),
    (lambda: one_shot(-0.1), '`at` must be in [0, 1), got -0.1'),
    (lambda: one_shot(float('nan')), '`at` must be in [0, 1), got nan'),
    (lambda: agp()(float('nan')), 'must be a number in [0, 1], got nan'),
    (lambda: sparsity_at(agp(), 0.5, 1.5), 'final sparsity must be a finite float in [0, 1], got 1.5'),
    (lambda: sparsity_at(agp(), 0.5, float('nan')), 'final sparsity must be a finite float in [0, 1], got nan'),
    (lambda: sparsity_at(agp(), 0.5, 0.5, initial=-0.1), 'initial sparsity must be a finite float in [0, 1], got -0.1'),
    (lambda: sparsity_at(agp(), 0.5, 0.5, initial=0.7), 'must be <= final sparsity, got 0.7 > 0.5'),
    (lambda: sparsity_at(agp(), 0.5, {'a': 0.5, 'b': 2.}), "final sparsity for 'b' must be a finite float in [0, 1], got 2.0"),
    (lambda: sparsity_at(agp(), 0.5, {'a': 0.5}, initial={'b': 0.1}), '`initial` must have the keys of `final_sparsity`'),
    (lambda: plot_schedules(agp(), linear(), names=['x']), '`names` must have one label per schedule (2), got 1'),
    (lambda: plot_schedules(), 'needs at least one schedule'),
])
def test_value_errors(f, msg):
    with pytest.raises(ValueError) as e: f()
    assert msg in str(e.value), str(e.value)

@pytest.mark.parametrize('f,msg', [
    (lambda: agp(start='0.1'), "`start` must be a real number, got '0.1'"),
    (lambda: linear(end=None), '`end` must be a real number, got None'),
    (lambda: one_shot('a'), "`at` must be a real number, got 'a'"),
    (lambda: agp()('0.5'), "`p` must be a real number, got '0.5'"),
    (lambda: as_schedule(0.5), 'got 0.5'),
    (lambda: as_schedule('agp'), "got 'agp'"),
    (lambda: Schedule(3), '`f` must be callable or None, got 3'),
])
def test_type_errors(f, msg):
    with pytest.raises(TypeError) as e: f()
    assert msg in str(e.value), str(e.value)

def test_as_schedule():
    s = agp()
    assert as_schedule(s) is s
    q = as_schedule(lambda p: p**2)
    assert isinstance(q, Schedule) and (q.start, q.end) == (0., 1.)
    assert q(0.5) == 0.25 and q(1.) == 1. and q(-1.) == 0.
    assert as_schedule(lambda p: np.float64(p))(0.5) == 0.5          # numpy / tensor scalars are accepted
    assert as_schedule(lambda p: torch.tensor(p))(0.5) == 0.5
    for bad, shown in [(lambda p: 1.5, '1.5'), (lambda p: -0.1, '-0.1'), (lambda p: float('nan'), 'nan'),
                       (lambda p: float('inf'), 'inf'), (lambda p: None, 'None'), (lambda p: 'x', "'x'"),
                       (lambda p: [p], '[0.5]'), (lambda p: True, 'True')]:
        with pytest.raises(ValueError) as e: as_schedule(bad)(0.5)
        assert 'must be a finite float in [0, 1], got ' + shown in str(e.value)
        assert 'p=0.5' in str(e.value)

def test_custom_ramp():
    s = Schedule(math.sqrt, 0.2, 0.6, name='sqrt')
    assert math.isclose(s(0.3), 0.5) and repr(s) == 'sqrt(start=0.2, end=0.6)'
    with pytest.raises(ValueError, match='got 1.8'): Schedule(lambda r: 2*r)(0.9)

def test_sparsity_at_dict():
    d = sparsity_at(linear(), 0.5, {'a': 0.4, 'b': 0.8}, initial={'a': 0.2, 'b': 0.})
    assert d.keys() == {'a', 'b'}
    assert math.isclose(d['a'], 0.3) and math.isclose(d['b'], 0.4)
    assert sparsity_at(lambda p: p, 0.5, 0.6) == 0.3          # plain callables go through as_schedule

def test_plot_schedules():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    out = plot_schedules(one_shot(), iterative(3, 0., 0.8), agp(0., 0.8), names=['a', 'b', 'c'], final=0.8, ax=ax, n=101)
    assert out is ax and len(ax.lines) == 3
    assert [l.get_label() for l in ax.lines] == ['a', 'b', 'c']
    y = ax.lines[2].get_ydata()
    assert math.isclose(max(y), 0.8) and y[0] == 0.
    ax2 = plot_schedules(lambda p: p)
    assert ax2.lines[0].get_label() == 'as_schedule(<lambda>)'
    plt.close('all')
