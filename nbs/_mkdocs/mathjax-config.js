// MathJax 2.7 from the site itself (assets/mathjax, from the jupyter-server-mathjax package): TeX in,
// HTML-CSS out with the STIX-Web fonts that package ships (the TeX web fonts it does not ship), $...$
// and $$...$$ as in Jupyter. TeX errors show (noErrors and noUndefined off); the fast preview and the
// hidden MathML copy are off, which halves the typesetting time of a page with many formulas.
window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js", "Safe.js"],
  tex2jax: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  TeX: {noErrors: {disabled: true}, noUndefined: {disabled: true}},
  "fast-preview": {disabled: true},
  AssistiveMML: {disabled: true},
  menuSettings: {FastPreview: false, assistiveMML: false},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none"
};
