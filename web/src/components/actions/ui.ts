// Class lists shared by the quick actions' controls (Tailwind), so the four panels look alike.
export const focusRing =
  'focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-green-700 dark:focus-visible:outline-green-400';

export const primaryButton = `inline-flex min-h-10 items-center justify-center gap-2 rounded-md bg-green-700 px-4 py-2 text-sm font-semibold text-white hover:bg-green-800 aria-disabled:cursor-not-allowed aria-disabled:bg-slate-500 aria-disabled:hover:bg-slate-500 dark:bg-green-600 dark:text-slate-950 dark:hover:bg-green-500 dark:aria-disabled:bg-slate-600 dark:aria-disabled:text-slate-100 ${focusRing}`;

export const secondaryButton = `inline-flex min-h-10 items-center justify-center gap-2 rounded-md border border-slate-400 bg-white px-3 py-2 text-sm font-medium text-slate-900 hover:bg-slate-100 disabled:cursor-not-allowed disabled:opacity-60 dark:border-slate-500 dark:bg-slate-800 dark:text-slate-100 dark:hover:bg-slate-700 ${focusRing}`;

export const field = `w-full rounded-md border border-slate-400 bg-white px-3 py-2 text-sm text-slate-900 placeholder:text-slate-500 dark:border-slate-500 dark:bg-slate-800 dark:text-slate-100 dark:placeholder:text-slate-400 ${focusRing}`;

export const fileField = `block w-full text-sm text-slate-700 file:mr-3 file:min-h-10 file:rounded-md file:border file:border-slate-400 file:bg-white file:px-3 file:py-2 file:text-sm file:font-medium file:text-slate-900 hover:file:bg-slate-100 dark:text-slate-300 dark:file:border-slate-500 dark:file:bg-slate-800 dark:file:text-slate-100 ${focusRing}`;

export const label = 'block text-sm font-medium text-slate-800 dark:text-slate-200';
export const hint = 'text-sm text-slate-600 dark:text-slate-400';
