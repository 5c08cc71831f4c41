"Build fastprune from the metadata in settings.ini (the classic nbdev shape)."
from configparser import ConfigParser
from pathlib import Path
from setuptools import setup, find_packages

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = dict(apache2=('Apache Software License 2.0', 'OSI Approved :: Apache Software License'),
                mit=('MIT License', 'OSI Approved :: MIT License'))
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
lic = licenses[cfg['license']]
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']

readme = here/'README.md'
setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'].split(),
    author=cfg['author'], author_email=cfg['author_email'],
    license=lic[0],
    url=cfg['git_url'],
    project_urls={'Repository': cfg['git_url'], 'Documentation': cfg['doc_url']},
    classifiers=[f'Development Status :: {int(cfg["status"]) + 1} - {statuses[int(cfg["status"])]}',
                 'Intended Audience :: Developers', 'Intended Audience :: Science/Research',
                 f'License :: {lic[1]}', 'Natural Language :: English',
                 'Topic :: Scientific/Engineering :: Artificial Intelligence'] +
                [f'Programming Language :: Python :: {v}' for v in py_versions[py_versions.index(min_python):]],
    packages=find_packages(include=['fastprune', 'fastprune.*']),
    include_package_data=True,
    python_requires=f'>={min_python}',
    install_requires=cfg['requirements'].split(),
    extras_require={'deploy': cfg.get('deploy_requirements', '').split(),
                    'dev': cfg['dev_requirements'].split() + cfg.get('deploy_requirements', '').split()},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f'{cfg["lib_name"]}={cfg["lib_name"]}._modidx:d']},
    zip_safe=False,
)
